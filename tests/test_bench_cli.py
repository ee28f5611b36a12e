"""`vring bench` runs end to end and writes what it promises (figures are not checked: benchmarks never gate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vring
from vring.bench_twoproc import run_one

PACKAGE_ROOT = str(Path(vring.__file__).resolve().parent.parent)


def vring_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vring", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))


@pytest.mark.c_extension  # the table has the Cython rows
def test_bench_quick_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = vring_cli("bench", "--quick", "--seconds", "0.002", "--no-two-process", "--json", str(out))
    assert done.returncode == 0, done.stderr
    for row in ("pure Python, per call, 3desc", "Cython, batch 32, 1desc", "C floor, batch 32, 3desc",
                "packed: Cython, batch 32, 3desc", "packed: C floor, batch 32, 1desc"):
        assert row in done.stdout
    assert "split: Cython per call / pure Python per call, 3desc (speed-up)" in done.stdout
    assert "[20/20]" in done.stderr  # progress while it runs
    figures = json.loads(out.read_text())
    assert figures["environment"]["vring"] == vring.__version__
    assert figures["environment"]["python"] and figures["environment"]["compiler"]
    assert len(figures["results"]) == 20
    assert all(r["ns_per_request"] > 0 and r["requests_per_s"] > 0 for r in figures["results"])
    assert len(figures["ratios"]) == 12


@pytest.mark.c_extension  # with matplotlib, the whole table runs, Cython rows too
def test_bench_plot_needs_matplotlib_or_writes_a_png(tmp_path):
    png = tmp_path / "bench.png"
    done = vring_cli("bench", "--quick", "--seconds", "0.001", "--no-two-process", "--plot", str(png))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert done.returncode == 2 and "pip install 'vring[plot]'" in done.stderr
        assert not png.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.c_extension  # run_one benchmarks the Cython twin
def test_two_process_benchmark_moves_requests():
    for mode in ("poll", "eventfd"):
        result = run_one(mode, True, 0.05)
        assert result.requests > 0 and result.requests_per_s > 0
