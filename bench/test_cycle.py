"""Request-cycle benchmarks (pytest-benchmark): one group per request shape and feature set, so that each table
compares the twins and the APIs side by side. Times are per call; ``requests_per_call`` in extra_info says how many
requests one call moves (1 per call, the batch size, or the C floor's 4096).

Run from this directory against the installed package: ``python -m pytest`` (see README.md for comparing runs).
"""

from __future__ import annotations

import pytest

from vring.bench.cases import FEATURE_SETS, make_case

CASES = []
for shape in ("1desc", "3desc"):
    for features in FEATURE_SETS:
        group = pytest.mark.benchmark(group=f"cycle {shape} {features}")
        for impl in ("cython", "python"):
            for api, batch in (("percall", 1), ("batch", 32), ("batch", 256)):
                CASES.append(pytest.param(impl, api, batch, shape, features, "split", marks=group,
                                          id=f"{shape}-{features}-{impl}-{api}{batch if api == 'batch' else ''}"))
        CASES.append(pytest.param("cython", "cfloor", 32, shape, features, "split", marks=group,
                                  id=f"{shape}-{features}-cython-cfloor32"))
    packed_group = pytest.mark.benchmark(group=f"cycle {shape} indirect+event_idx packed")
    for impl, api, batch in (("python", "percall", 1), ("cython", "percall", 1), ("cython", "batch", 32),
                             ("cython", "batch", 256), ("cython", "cfloor", 32)):
        CASES.append(pytest.param(impl, api, batch, shape, "indirect+event_idx", "packed", marks=packed_group,
                                  id=f"{shape}-packed-{impl}-{api}{batch if api != 'percall' else ''}"))

DEVICE_CASES = [
    pytest.param(impl, shape, marks=pytest.mark.benchmark(group=f"device pop+push {shape}"), id=f"{shape}-{impl}")
    for shape in ("1desc", "3desc") for impl in ("cython", "python")
]


@pytest.mark.parametrize("impl,api,batch,shape,features,ring", CASES)
def test_request_cycle(benchmark, impl, api, batch, shape, features, ring):
    fn, requests = make_case(impl, api, shape, features, batch, ring)
    benchmark.extra_info["requests_per_call"] = requests
    benchmark(fn)


@pytest.mark.parametrize("impl,shape", DEVICE_CASES)
def test_device_pop_push_on_a_filled_ring(benchmark, impl, shape):
    fn, requests = make_case(impl, "device", shape, "indirect+event_idx", 32)
    benchmark.extra_info["requests_per_call"] = requests
    benchmark(fn)
