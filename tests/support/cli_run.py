"""Running the real `vring` command in a subprocess, and what every failure of it must look like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import vring

PACKAGE_ROOT = str(Path(vring.__file__).resolve().parent.parent)
ENV = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)


def vring_cli(*args: str, stdin: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m vring ARGS`, stdout as bytes, stderr as text."""
    done = subprocess.run([sys.executable, "-m", "vring", *args], input=stdin, capture_output=True, timeout=timeout,
                          env=ENV)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, done.stderr.decode())


def vring_popen(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vring", *args], env=ENV, **kwargs)


def assert_one_line(done: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The command failed with ``code`` and said so in one stderr line holding every fragment, no traceback."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
