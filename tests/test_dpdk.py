"""vring's vhost-user front-end against DPDK's vhost-user back-end (the net_vhost PMD of dpdk-testpmd).

testpmd serves one vhost-user-net port on a unix socket and, in io forwarding mode with a loop topology, sends
every frame it receives on the port back out of the same port, untouched (io mode rewrites no MAC address: it
moves mbufs from rx to tx and nothing else). NetClient sends numbered frames and must get each one back, in
order, byte for byte: with packed rings (the point of this file) and split rings as the control.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from vring._features import Feature
from vring.drivers.net import MAX_FRAME, NetClient
from vring.vhost_user.frontend import BackendError, Frontend

from support.backends import _stop, _wait_for_socket, require

TESTPMD_LIFETIME = 60  # seconds: `timeout` ends testpmd even if the fixture's teardown never runs


def _lcores() -> str:
    """Two lcores (main + one forwarding core) on the CPUs we may use; both on one CPU if there is only one."""
    cpus = sorted(os.sched_getaffinity(0))
    second = cpus[1] if len(cpus) > 1 else cpus[0]
    return f"0@{cpus[0]},1@{second}"


def _runtime_dir(prefix: str) -> Path:
    """Where DPDK's EAL puts its run-time directory for ``--file-prefix`` (removed after the test)."""
    if os.geteuid() == 0:
        return Path("/var/run/dpdk") / prefix
    return Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / "dpdk" / prefix


@pytest.fixture
def testpmd(tmp_path: Path) -> Iterator[Path]:
    """dpdk-testpmd as a vhost-user server on a socket in tmp_path, looping frames back; yields the socket."""
    exe = require("dpdk-testpmd")
    sock = tmp_path / "vhost-net.sock"
    log = tmp_path / "testpmd.log"
    prefix = f"vring-{uuid.uuid4().hex[:12]}"
    args = [
        "timeout", "--kill-after=5", str(TESTPMD_LIFETIME), exe,
        # EAL: no hugepages (plain memory), no PCI scan, no shared config or telemetry socket; its own prefix so
        # that parallel runs do not meet.
        "--lcores", _lcores(), "--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--no-telemetry",
        "--file-prefix", prefix, "--log-level", "lib.vhost.config:info",
        "--vdev", f"net_vhost0,iface={sock},queues=1",
        "--",
        # io forwarding from the port back to itself; start at once and do not wait for the link (it comes up
        # only when we connect). Non-interactive testpmd then blocks reading stdin: a pipe we keep open.
        "--total-num-mbufs=8192", "--forward-mode=io", "--port-topology=loop", "--auto-start",
        "--disable-link-check",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_socket(proc, str(sock), log)
        yield sock
    finally:
        _stop(proc)  # terminate, then kill
        if proc.stdin is not None:
            proc.stdin.close()
        shutil.rmtree(_runtime_dir(prefix), ignore_errors=True)


def _frame(seq: int, length: int) -> bytes:
    """A broadcast Ethernet frame of ``length`` bytes carrying its sequence number and a pattern derived from it."""
    header = b"\xff" * 6 + bytes.fromhex("020000000001") + struct.pack(">H", 0x88B5)  # local experimental type
    body = struct.pack(">II", seq, length)
    pattern = bytes((seq * 7 + k) & 0xFF for k in range(length - len(header) - len(body)))
    return header + body + pattern


def _lengths(n: int) -> list[int]:
    """n lengths spread over 60..1514, both ends included."""
    return [60 + (MAX_FRAME - 60) * k // (n - 1) for k in range(n)]


@pytest.mark.parametrize("packed, event_idx, queue_size", [
    pytest.param(True, True, 256, id="packed-event_idx-256"),
    pytest.param(True, False, 64, id="packed-flags-64"),  # 200 frames wrap a 64-entry ring: the wrap counters
    pytest.param(False, True, 256, id="split-event_idx-256"),
    pytest.param(False, False, 64, id="split-flags-64"),
])
def test_frames_loop_back_through_testpmd(testpmd: Path, packed: bool, event_idx: bool, queue_size: int) -> None:
    count = 200
    frames = [_frame(seq, length) for seq, length in enumerate(_lengths(count))]
    with Frontend(str(testpmd), timeout=10.0).connect() as front:
        client = NetClient(front, packed=packed, event_idx=event_idx, queue_size=queue_size)
        assert bool(client.features & Feature.RING_PACKED) == packed
        assert client.features & Feature.VERSION_1
        assert bool(client.features & Feature.EVENT_IDX) == event_idx
        # Keep at most a queue's worth in flight: every frame then finds a receive buffer (testpmd drops what
        # does not fit), and the rings go round several times.
        received: list[bytes] = []
        sent = 0
        started = time.monotonic()
        while len(received) < count:
            while sent < count and sent - len(received) < queue_size:
                client.send(frames[sent])
                sent += 1
            received.append(client.receive(timeout=5.0))
        elapsed = time.monotonic() - started
        for seq, (want, got) in enumerate(zip(frames, received)):
            assert got == want, f"frame {seq}: {len(got)} bytes back for {len(want)} sent (seq in it: " \
                                f"{struct.unpack_from('>I', got, 14)[0] if len(got) >= 18 else None})"
        # Exactly what we sent, nothing more.
        with pytest.raises(BackendError, match="no completion in time"):
            client.receive(timeout=0.2)
        print(f"{count} frames round trip in {elapsed * 1000:.0f} ms, features {client.features:#x}")
