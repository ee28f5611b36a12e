"""vhost-user-blk back-ends for the tests: vring's own (`vring serve blk`) and QEMU's qemu-storage-daemon, both
started as processes on a unix socket, so that one test holds both to the same behaviour."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

import vring

PACKAGE_ROOT = str(Path(vring.__file__).resolve().parent.parent)


def require(program: str) -> str:
    """The path of a program the test needs: in CI its absence fails the test, elsewhere it skips it."""
    path = shutil.which(program)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not installed: .ci/run must install it")
        pytest.skip(f"{program} is not installed (scripts/install-guest-deps.sh installs it)")
    return path


def _wait_for_socket(proc: subprocess.Popen, path: str, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"back-end exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"back-end did not listen on {path} in {timeout} s: {log.read_text()}")
        time.sleep(0.02)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_args(image: Path, sock: Path, *, queues: int = 1, read_only: bool = False, device: str = "blk") -> list[str]:
    """The arguments of `vring` that serve ``device`` on ``sock`` (README's QEMU example shows them)."""
    args = ["serve", device]
    if device == "blk":
        args += [str(image), "--socket", str(sock), "--queues", str(queues)] + (["--read-only"] if read_only else [])
        return args
    return args + ["--socket", str(sock)]


@contextlib.contextmanager
def vring_blk(image: Path, sock: Path, *, queues: int = 1, read_only: bool = False,
              device: str = "blk", extra: tuple[str, ...] = ()) -> Iterator[subprocess.Popen]:
    """`vring serve blk IMAGE` on ``sock`` (``extra`` options added); the log (at -vv) is kept next to the
    socket."""
    log = sock.with_suffix(".log")
    args = [sys.executable, "-m", "vring", *serve_args(image, sock, queues=queues, read_only=read_only,
                                                      device=device), "-vv", *extra]
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for_socket(proc, str(sock), log)
        yield proc
    finally:
        _stop(proc)


@contextlib.contextmanager
def qsd_blk(image: Path, sock: Path, *, queues: int = 1, read_only: bool = False) -> Iterator[subprocess.Popen]:
    """qemu-storage-daemon exporting ``image`` as vhost-user-blk on ``sock``."""
    qsd = require("qemu-storage-daemon")
    log = sock.with_suffix(".log")
    args = [qsd, "--blockdev", f"driver=file,node-name=file0,filename={image}",
            "--blockdev", f"driver=raw,node-name=disk0,file=file0{',read-only=on' if read_only else ''}",
            "--export", f"type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={sock},"
                        f"writable={'off' if read_only else 'on'},num-queues={queues}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_socket(proc, str(sock), log)
        yield proc
    finally:
        _stop(proc)


BACKENDS = {"vring": vring_blk, "qsd": qsd_blk}


def log_has(sock: Path, text: str, timeout: float = 5.0) -> bool:
    """Whether the log vring_blk keeps next to ``sock`` says ``text`` within ``timeout`` seconds."""
    log = sock.with_suffix(".log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return True
        time.sleep(0.05)
    return False
