"""Bugs the fuzz harnesses (fuzz/) found, pinned: each test is the smallest input that showed one."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

import vring
from vring import Feature, contiguous_bytes, contiguous_layout, create_device_queue
from vring.devices.blk import HEADER, S_OK, T_GET_ID, T_IN, BlkDevice

SIZE = 8
RING, DATA = 0x1000, 0x10000
WRITE = 2


@pytest.mark.skipif(vring.IMPLEMENTATION != "cython", reason="the C executor is the C core's")
def test_the_c_executor_returns_a_rounds_chains_in_the_order_they_were_made_available(tmp_path):
    """fuzz_blk_worker: synchronous I/O answered a round's requests last first (its list of answered requests was a
    stack), so the used ring ran backwards from the avail ring, unlike BlkDevice.handle's."""
    from vring import _cring

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * 16)
    device = BlkDevice(str(image), aio="sync")
    features = int(Feature.VERSION_1)
    layout = contiguous_layout(features, SIZE, RING)
    memory = np.zeros(DATA + 0x1000, np.uint8)
    mem = _cring.GuestMemory()
    mem.add_region(0, memory)
    heads = []
    for k, rtype in enumerate((T_IN, T_GET_ID, T_IN, T_IN)):  # two descriptors each: header, data + status
        header, data = DATA + 0x400 * k, DATA + 0x400 * k + 16
        mem.write(header, HEADER.pack(rtype, 0, k))
        mem.write(layout.desc + 32 * k, struct.pack("<QIHH", header, 16, 1, 2 * k + 1))
        mem.write(layout.desc + 32 * k + 16, struct.pack("<QIHH", data, 513, WRITE, 0))
        mem.write(layout.avail + 4 + 2 * k, struct.pack("<H", 2 * k))
        heads.append(2 * k)
    mem.write(layout.avail + 2, struct.pack("<H", len(heads)))
    assert contiguous_bytes(features, SIZE) < DATA - RING
    queue = create_device_queue(mem, layout, features, twin=_cring)
    kick, call, stop = (os.eventfd(0, os.EFD_NONBLOCK) for _ in range(3))
    try:
        worker = device.make_worker([(0, queue, kick, call)], stop)
        os.eventfd_write(stop, 1)  # serve what the ring holds, then return
        assert worker.run() is None
        worker.close()
    finally:
        for fd in (kick, call, stop):
            os.close(fd)
        device.close()
    used = [struct.unpack("<II", mem.read(layout.used + 4 + 8 * k, 8)) for k in range(len(heads))]
    assert [head for head, _ in used] == heads
    assert all(mem.read(DATA + 0x400 * k + 16 + 512, 1)[0] == S_OK for k in range(len(heads)))
