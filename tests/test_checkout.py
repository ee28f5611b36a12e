"""`python -m vring` from the checkout's root, where the source tree comes before the installed package on
sys.path: scripts/setup.sh builds the core in place too, so the command works there as well."""

from __future__ import annotations

import os
import subprocess
import sys

from support.source import SOURCE_DIR, source_file


def test_python_m_vring_works_from_the_checkout():
    source_file("setup.py")  # a checkout, not a copy of the tests
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VRING_PUREPYTHON")}
    done = subprocess.run([sys.executable, "-m", "vring", "info"], cwd=SOURCE_DIR, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "implementation: cython" in done.stdout, done.stdout
