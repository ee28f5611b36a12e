"""`vring bench` runs end to end and writes what it promises (figures are not checked: benchmarks never gate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vring
from vring.bench import Result, default_plan, ratios
from vring.bench.twoproc import run_one

PACKAGE_ROOT = str(Path(vring.__file__).resolve().parent.parent)


def vring_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vring", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))


@pytest.mark.c_extension  # the table has the Cython rows
def test_bench_quick_prints_the_table_and_writes_json(tmp_path):
    plan = default_plan(quick=True)
    # Every ratio the plan's cases allow, named as a run with any figures names them.
    expected_ratios = [name for name, _ in ratios([Result.of(p, [1.0]) for p in plan])]
    out = tmp_path / "bench.json"
    done = vring_cli("bench", "--quick", "--seconds", "0.002", "--no-two-process", "--json", str(out))
    assert done.returncode == 0, done.stderr
    for row in ("pure Python, per call, 3desc", "Cython, batch 32, 1desc", "C floor, batch 32, 3desc",
                "packed: Cython, batch 32, 3desc", "packed: C floor, batch 32, 1desc"):
        assert row in done.stdout
    table_rows = [line.split("  ")[0] for line in done.stdout.splitlines()
                  if any(line.startswith(p.name + " ") for p in plan)]
    assert table_rows == [p.name for p in plan]
    assert "split: Cython per call / pure Python per call, 3desc (speed-up)" in done.stdout
    assert all(f"{name}: " in done.stdout for name in expected_ratios)
    assert f"[{len(plan)}/{len(plan)}]" in done.stderr  # progress while it runs
    figures = json.loads(out.read_text())
    assert figures["environment"]["vring"] == vring.__version__
    assert figures["environment"]["python"] and figures["environment"]["compiler"]
    assert [r["name"] for r in figures["results"]] == [p.name for p in plan]
    assert all(r["ns_per_request"] > 0 and r["requests_per_s"] > 0 for r in figures["results"])
    assert list(figures["ratios"]) == expected_ratios
    assert figures["two_process"] == []


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


# `python -m vring ARGS`, then the names of every module loaded by its end into the file named first (sys.modules
# rather than -X importtime, which does not see importlib.import_module).
LOADED_MODULES = """
import runpy, sys
out = sys.argv.pop(1)
try:
    runpy.run_module("vring", run_name="__main__", alter_sys=True)
finally:
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
"""


def modules_loaded_by(tmp_path: Path, *args: str) -> set[str]:
    listing = tmp_path / "modules.txt"
    done = subprocess.run([sys.executable, "-c", LOADED_MODULES, str(listing), *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))
    assert done.returncode in (0, 2), done.stderr  # 2: a usage error, after the command's module was loaded
    return set(listing.read_text().split())


@pytest.mark.parametrize("args", [("--help",), ("info",), ("demo",), ("serve", "--help"), ("serve", "blk"),
                                  ("blk", "--help")], ids=" ".join)
def test_other_commands_do_not_import_the_benchmarks(tmp_path, args):
    if args == ("serve", "blk"):  # no image: refused once what serving needs is imported
        args += ("--socket", str(tmp_path / "s.sock"))
    loaded = modules_loaded_by(tmp_path, *args)
    assert "vring.cli" in loaded
    if args[0] != "--help":
        assert f"vring.cli.{args[0]}" in loaded
    assert sorted(name for name in loaded if name.startswith(("vring.bench", "vring.cli.bench"))) == []


def test_bench_command_imports_the_benchmarks(tmp_path):
    """The check above can fail: `vring bench` does load them."""
    assert {"vring.cli.bench", "vring.bench"} <= modules_loaded_by(tmp_path, "bench", "--help")
