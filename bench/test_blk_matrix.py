"""The virtio-blk benchmark matrix in its quick mode (CI runs it through scripts/bench.sh): every back-end and
client answers, every read is verified, and the figures come out as JSON. It never gates on speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_matrix(tmp_path):
    out = tmp_path / "matrix.json"
    done = subprocess.run([sys.executable, "-m", "bench.blk_matrix", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    print(done.stdout)  # the figures, into the CI log
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert {(r["client"], r["case"]) for r in runs} == {
        (client, case) for client in ("c-floor", "vring") for case in ("1x1-randread", "1x32-randread",
                                                                         "2x32-randread")}
    assert {r["backend"].split("(")[0] for r in runs} == {"vring", "qsd"}
    assert all(r["verified"] and r["requests"] > 0 and r["cpu_us_per_request"] >= 0 for r in runs)
    assert "no error" in done.stdout
