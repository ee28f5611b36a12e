"""Driver and device in different processes over one memfd mapping, notifying each other by eventfd."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

import vring
from vring import Feature, MalformedChain, QueueState, SplitLayout

from conftest import TWINS, twin_module
from support.peer import REPLY, REQ

PEER = str(Path(__file__).parent / "support" / "peer.py")
MEM = 4 << 20
SLOT = 1024  # bytes of request and of reply buffer per request in flight
DATA = 0x100000


def spawn(twin_name, *args, fds):
    """Start peer.py with the same twin and the same vring package as this process."""
    package_root = str(Path(vring.__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, VRING_PUREPYTHON="1" if twin_name == "python" else "0", PYTHONPATH=path)
    return subprocess.Popen([sys.executable, PEER, *map(str, args)], pass_fds=fds, env=env)


def wait_for(poller, peer, what, timeout_s=20.0):
    """Wait for an eventfd in slices, so that a peer that died fails the test at once, not after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not poller.poll(200):
        assert peer.poll() is None, f"the peer process exited with {peer.returncode} while we waited for {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout_s} s"


@pytest.mark.parametrize("features", [Feature.EVENT_IDX | Feature.INDIRECT_DESC, 0], ids=["event_idx", "flags"])
@pytest.mark.parametrize("twin_name", TWINS)
def test_100k_requests_between_two_processes(twin_name, features):
    twin = twin_module(twin_name)  # the device process runs the same twin
    n, size, depth = 100_000, 256, 128
    fd = os.memfd_create("vring-two-process")
    kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    os.ftruncate(fd, MEM)
    features |= Feature.VERSION_1
    peer = spawn(twin_name, "device", fd, MEM, size, int(features), n, kick, call, fds=(fd, kick, call))
    try:
        mem = twin.GuestMemory()
        mem.add_region_fd(0, MEM, fd)
        layout = SplitLayout.contiguous(size, 0)
        drv = twin.DriverQueue(mem, layout, features, indirect_area=0x10000, indirect_max=4)
        free_slots = list(range(depth))
        sent = done = 0
        poller = select.poll()
        poller.register(call, select.POLLIN)
        while done < n:
            while free_slots and sent < n:
                slot = free_slots.pop()
                out, inp = DATA + 2 * SLOT * slot, DATA + 2 * SLOT * slot + SLOT
                payload = (sent.to_bytes(8, "little") * 64)[: 64 + sent % 900]
                mem.write(out, REQ.pack(sent, slot * 7919, zlib.crc32(payload)) + payload)
                drv.add([(out, REQ.size + len(payload))], [(inp, SLOT)], token=(slot, sent, payload))
                sent += 1
            if drv.kick_needed():
                os.eventfd_write(kick, 1)
            used = drv.pop_used()
            if not used:
                if drv.enable_interrupts():
                    continue  # completions arrived while we were deciding to sleep
                wait_for(poller, peer, "interrupt from the device process")
                os.eventfd_read(call)
                continue
            for (slot, seq, payload), written in used:
                reply = mem.read(DATA + 2 * SLOT * slot + SLOT, written)
                assert written == REPLY.size + len(payload)
                assert REPLY.unpack_from(reply) == (seq, (slot * 7919) ^ 0x5A5A5A5A5A5A5A5A, zlib.crc32(payload),
                                                    len(payload))
                assert reply[REPLY.size:] == payload[::-1]
                free_slots.append(slot)
                done += 1
        assert peer.wait(timeout=30) == 0
        assert drv.num_free == size and drv.last_used_idx == n & 0xFFFF
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
        for f in (fd, kick, call):
            os.close(f)


def test_a_descriptor_flipped_during_the_pop_is_read_once(twin):
    """A driver rewrites the descriptor while the device validates it: every chain the device hands out must
    match one of the two values whole (checked and used from one copy), never a mix of both."""
    import struct

    fd = os.memfd_create("vring-flip")
    os.ftruncate(fd, MEM)
    size = 8
    layout = SplitLayout.contiguous(size, 0)
    good = struct.pack("<QIHH", DATA, 16, 0, 0)
    bad = struct.pack("<QIHH", DATA, MEM, 0, 0)  # runs past the end of guest memory
    stop = 0x8000
    peer = spawn("python", "flipper", fd, MEM, layout.desc, good.hex(), bad.hex(), stop, fds=(fd,))
    try:
        mem = twin.GuestMemory()
        mem.add_region_fd(0, MEM, fd)
        dev = twin.DeviceQueue(mem, layout)
        deadline = time.monotonic() + 10
        while mem.read(stop + 1, 1) != b"\1":
            assert time.monotonic() < deadline, "flipper did not start"
            time.sleep(0.01)
        chains = errors = 0
        for i in range(1, 20001):
            mem.write(layout.avail + 4 + 2 * ((i - 1) % size), b"\0\0")  # head 0
            mem.write(layout.avail + 2, (i & 0xFFFF).to_bytes(2, "little"))
            try:
                chain = dev.pop()
            except MalformedChain as exc:
                assert exc.reason == "buffer-outside-memory"
                errors += 1
                dev.restore(QueueState(i & 0xFFFF, dev.used_idx))
                continue
            assert chain.readable_len == 16
            assert [v.nbytes for v in chain.readable] == [16]
            assert chain.segments == [(DATA, 16, False)]
            dev.push(chain.head, 0)
            chains += 1
        assert chains and errors, f"the race was not exercised ({chains} chains, {errors} errors)"
    finally:
        os.pwrite(fd, b"\1", stop)
        peer.wait(timeout=10)
        os.close(fd)
