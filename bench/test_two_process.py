"""Two-process benchmark (pytest-benchmark): requests/s between a driver here and a device in a forked process,
over one memfd mapping, busy-polling or sleeping on eventfds, with and without the device copying 4 KiB."""

from __future__ import annotations

import pytest

from vring.bench.twoproc import run_one


@pytest.mark.benchmark(group="two-process blk read", min_rounds=1, warmup=False)
@pytest.mark.parametrize("mode", ["poll", "eventfd"])
@pytest.mark.parametrize("copy", [False, True], ids=["no-copy", "copy-4k"])
def test_two_process(benchmark, mode, copy):
    result = benchmark.pedantic(run_one, args=(mode, copy, 0.5), rounds=1, iterations=1)
    benchmark.extra_info["requests_per_s"] = result.requests_per_s
    benchmark.extra_info["ns_per_request"] = result.ns_per_request
    assert result.requests > 0
