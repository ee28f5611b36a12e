"""The C floor client (``bench/c/vhost_user_blk_client.c``): built with the system C compiler on first use, run
against a back-end's socket, its one JSON line read back. It is what ``vring blk bench --compare-c-floor`` and
the benchmark matrix hold vring's own client against.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

RELATIVE_SOURCE = Path("bench") / "c" / "vhost_user_blk_client.c"
CFLAGS = ("-O2", "-Wall", "-pthread")


class CFloorError(Exception):
    """The C floor client could not be built, or its run failed (its first error is in the message)."""


def default_source() -> Path:
    """The client's source in vring's source tree: the one VRING_SOURCE_DIR names, else the checkout this package
    is imported from (an installed package has no bench/)."""
    tree = os.environ.get("VRING_SOURCE_DIR") or Path(__file__).resolve().parent.parent.parent
    return Path(tree) / RELATIVE_SOURCE


def build(source: Path | None = None, build_dir: Path | None = None) -> Path:
    """The client's binary, compiled from ``source`` (default: ``default_source()``) into ``build_dir`` (default:
    a directory under the temporary directory named by the source's hash, so that an edit rebuilds it and an
    unchanged source does not)."""
    source = source or default_source()
    if not source.is_file():
        raise CFloorError(f"no C floor client source at {source}: it is in vring's source tree ({RELATIVE_SOURCE}), "
                          "not in an installed package; name a checkout with VRING_SOURCE_DIR")
    text = source.read_bytes()
    digest = hashlib.sha256(text + " ".join(CFLAGS).encode()).hexdigest()[:16]
    directory = build_dir or Path(tempfile.gettempdir()) / f"vring-c-floor-{os.getuid()}-{digest}"
    binary = directory / "vhost_user_blk_client"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid != os.getuid():  # a shared temporary directory: run only a binary we built
        raise CFloorError(f"{directory} belongs to another user: not running what is in it")
    if binary.is_file():
        return binary
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise CFloorError("no C compiler (cc) to build the C floor client")
    partial = directory / f".{binary.name}.{os.getpid()}"
    done = subprocess.run([cc, *CFLAGS, "-o", str(partial), str(source)], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or [f"{cc} exited with {done.returncode}"])[-1]
        raise CFloorError(f"building the C floor client failed: {last}")
    partial.replace(binary)  # atomic: a concurrent build never runs a half-written binary
    return binary


def run(socket: str, workload: str, *, queues: int = 1, depth: int = 32, block: int = 4096,
        seconds: float | None = None, requests: int | None = None, seed: int = 0, verify: bool = True,
        first: int = 0, count: int | None = None, event_idx: bool = True, timeout: float = 10.0,
        binary: Path | None = None) -> dict[str, Any]:
    """One run of the C floor client; its figures as a dict (``iops``, ``lat_us_p50``, ``lat_us_p99``, ...).
    CFloorError if it fails, or reports any error (a wrong byte, a non-OK status, a broken ring)."""
    args = [str(binary or build()), "--socket", socket, "--workload", workload, "--queues", str(queues),
            "--depth", str(depth), "--bs", str(block), "--seed", str(seed), "--first", str(first),
            "--timeout", str(timeout)]
    args += ["--requests", str(requests)] if requests is not None else ["--seconds", str(seconds or 3.0)]
    if count is not None:
        args += ["--count", str(count)]
    if not verify:
        args.append("--no-verify")
    if not event_idx:
        args.append("--no-event-idx")
    limit = timeout + (seconds or 0) + 30  # its own waits time out first; this only catches a hang
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise CFloorError(f"the C floor client did not finish in {limit:.0f} s") from None
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if not line.startswith("{"):
        raise CFloorError(f"the C floor client failed: {done.stderr.strip() or f'exit status {done.returncode}'}")
    result: dict[str, Any] = json.loads(line)
    if result["errors"] or done.returncode:
        raise CFloorError(f"the C floor client's {workload}: {result['errors']} errors, the first: "
                          f"{result['first_error']}")
    return result
