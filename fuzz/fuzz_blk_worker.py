"""Fuzz the C virtio-blk executor (``vring._cring.BlkWorker``, synchronous I/O: deterministic) against the Python
path (``BlkDevice.handle``): a ring of fuzzed virtio-blk requests is served once by each, from the same guest
memory and the same image, and both must leave the same used ring, the same guest memory and the same image.

Input format: u8 flags (bit 0: packed ring, bit 1: a read-only device, bit 2: EVENT_IDX, bit 3: the queue keeps
an inflight record), then requests, each as
``fuzz_blk_request.py`` lays them out: u8 segment count (count % 6 + 1), u8 index of the first device-writable
segment, one u16 length per segment (``% 0x100 + 1``; buffers laid one after the other from ``DATA``, across into
the adjacent region), then the readable bytes (header: u32 type, u32 reserved, u64 sector; then the data). The
ring holds at most ``QUEUE_SIZE`` descriptors; requests past that, or past the data regions, are left out.

Invariants: the executor ends when asked; every answered status byte is OK, IOERR or UNSUPP; nothing outside
the chains' writable buffers changes in the data regions (and no canary anywhere); the image changes only where
an OK write, discard or write-zeroes says, in the order the requests came; the executor and ``handle`` give the
same used elements, guest memory, image and inflight record. Run: ``python fuzz/fuzz_blk_worker.py -max_total_time=60 CORPUS``."""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from typing import Any

import numpy as np

import harness
from fuzz_blk_request import SECTORS, expected_image
from guest import DATA, DATA_END, RING, CanaryMemory, HarnessFailure, Input, timed

from vring import Feature, contiguous_layout, create_device_queue, inflight_region_size

with harness.instrumented():
    from vring.devices import blk

QUEUE_SIZE = 16
MAX_SEGMENT = 0x100
NEXT, WRITE, AVAIL, USED = 1, 2, 1 << 7, 1 << 15
GARBAGE = 0xEE  # what the writable buffers hold before the device answers
ROUND = harness.CYTHON.BLK_EXECUTOR_POP_ROUND  # the chains the executor pops from a ring per round of its loop
logging.getLogger("vring").setLevel(logging.CRITICAL)  # the device logs every malformed request

scratch = tempfile.TemporaryDirectory(prefix="vring-fuzz-blk-worker-")
IMAGE_START = bytes(k % 251 for k in range(SECTORS * blk.SECTOR))  # not zeroes, so that a discard shows
IMAGES = {read_only: os.path.join(scratch.name, f"disk-{read_only}.img") for read_only in (False, True)}
for path in IMAGES.values():
    with open(path, "wb") as f:
        f.write(IMAGE_START)
DEVICES = {read_only: blk.BlkDevice(path, read_only=read_only, aio="sync") for read_only, path in IMAGES.items()}


class Ring:
    """The requests of one input laid out in guest memory: descriptors, the avail side, buffers."""

    def __init__(self, inp: Input, packed: bool, features: int) -> None:
        self.guest = CanaryMemory(harness.CYTHON)
        self.packed = packed
        self.record = np.zeros(inflight_region_size(QUEUE_SIZE, packed), np.uint8)  # numpy: 8-byte aligned
        self.layout = contiguous_layout(features, QUEUE_SIZE, RING, align=4)
        self.requests: list[tuple[list[tuple[int, int, bool]], bytes]] = []  # (segments, readable bytes)
        self.request_of: dict[int, int] = {}  # the id a used element carries -> the request's index
        addr, slot = DATA, 0
        while inp.more() and len(self.requests) < QUEUE_SIZE:
            nseg = inp.u8() % 6 + 1
            first_writable = inp.u8() % (nseg + 1)
            lengths = [inp.u16() % MAX_SEGMENT + 1 for _ in range(nseg)]
            if slot + nseg > QUEUE_SIZE or addr + sum(lengths) > DATA_END:
                break
            segments = []
            for k, n in enumerate(lengths):
                segments.append((addr, n, k >= first_writable))
                addr += n
            readable = inp.take(sum(n for _, n, w in segments if not w))
            self.lay_out(len(self.requests), slot, segments, readable)
            self.request_of[len(self.requests) if packed else slot] = len(self.requests)  # buffer id / head
            self.requests.append((segments, readable))
            slot += nseg
        if not packed:
            self.guest.write(self.layout.avail + 2, struct.pack("<H", len(self.requests)))

    def lay_out(self, index: int, slot: int, segments: list[tuple[int, int, bool]], readable: bytes) -> None:
        offset = 0
        for k, (gpa, n, writable) in enumerate(segments):
            # through the memory map: a buffer may run from one data region into the next
            if writable:
                self.guest.mem.write(gpa, bytes([GARBAGE]) * n)
            else:
                self.guest.mem.write(gpa, readable[offset: offset + n])
                offset += n
            more = k + 1 < len(segments)
            flags = (NEXT if more else 0) | (WRITE if writable else 0)
            if self.packed:  # the first wrap: available is AVAIL set, USED clear; every descriptor has the id
                desc = struct.pack("<QIHH", gpa, n, index, flags | AVAIL)
            else:
                desc = struct.pack("<QIHH", gpa, n, flags, slot + k + 1 if more else 0)
            self.guest.write(self.layout.desc + 16 * (slot + k), desc)
        if not self.packed:
            self.guest.write(self.layout.avail + 4 + 2 * index, struct.pack("<H", slot))

    def used(self) -> list[tuple[int, int]]:
        """The used elements (id, len) the device returned, in order."""
        if self.packed:
            out, slot = [], 0
            while slot < QUEUE_SIZE:
                _, length, ident, flags = struct.unpack("<QIHH", self.guest.mem.read(self.layout.desc + 16 * slot,
                                                                                     16))
                if not (flags & AVAIL and flags & USED):
                    break
                out.append((ident, length))
                slot += len(self.requests[self.request_of[ident]][0]) if ident in self.request_of else 1
            return out
        count = struct.unpack("<H", self.guest.mem.read(self.layout.used + 2, 2))[0]
        return [struct.unpack("<II", self.guest.mem.read(self.layout.used + 4 + 8 * k, 8)) for k in range(count)]

    def data_bytes(self) -> bytes:
        return self.guest.mem.read(DATA, DATA_END - DATA)


def device_queue(ring: Ring, features: int, record: bool) -> Any:
    queue = create_device_queue(ring.guest.mem, ring.layout, features, twin=harness.CYTHON)
    if record:
        queue.attach_inflight(ring.record)
    return queue


def serve_c(ring: Ring, device: Any, features: int, record: bool) -> None:
    queue = device_queue(ring, features, record)
    kick, call, stop = (os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3))
    try:
        worker = device.make_worker([(0, queue, kick, call)], stop)
        if worker is None:
            raise HarnessFailure("BlkDevice.make_worker made no C executor for a C queue")
        os.eventfd_write(stop, 1)  # serve what the ring holds, then stop
        failed = timed(worker.run)
        if failed is not None:
            raise HarnessFailure(f"the executor found well-formed ring {failed} malformed: {worker.failure(failed)}")
        worker.close()
    finally:
        for fd in (kick, call, stop):
            os.close(fd)


def serve_python(ring: Ring, device: Any, features: int, record: bool) -> None:
    """In the executor's rounds: pop up to its round's chains, then answer and push each in order, until the ring
    is empty (so that an inflight record, whose free list a push changes, comes out the same)."""
    queue = device_queue(ring, features, record)
    while True:
        chains = []
        while len(chains) < ROUND and (chain := timed(queue.pop)) is not None:
            chains.append(chain)
        if not chains:
            return
        for chain in chains:
            written = timed(device.handle, 0, chain)
            timed(queue.push, chain.head, written)


def check_answers(ring: Ring, image_before: bytes, image_after: bytes) -> None:
    """The C executor's answers on their own: status bytes, writes only into writable buffers, the image."""
    used = ring.used()
    if len(used) != len(ring.requests):
        raise HarnessFailure(f"{len(ring.requests)} requests made available, {len(used)} answered")
    data = ring.data_bytes()
    want = bytearray(image_before)
    for ident, written in used:
        if ident not in ring.request_of:
            raise HarnessFailure(f"a used element of id {ident}, which no request has")
        segments, readable = ring.requests[ring.request_of[ident]]
        writable = [(gpa, n) for gpa, n, w in segments if w]
        if written > sum(n for _, n in writable):
            raise HarnessFailure(f"request {ident}: {written} bytes written into {writable}")
        status = None
        if writable:
            gpa, n = writable[-1]
            status = data[gpa - DATA + n - 1]
            if status not in (blk.S_OK, blk.S_IOERR, blk.S_UNSUPP):
                raise HarnessFailure(f"request {ident}: status byte {status} is not OK, IOERR or UNSUPP")
        if len(readable) >= blk.HEADER.size and status is not None:
            rtype, _, sector = blk.HEADER.unpack_from(readable)
            want = expected_image(want, rtype, sector, readable[blk.HEADER.size:], status)
    for request in ring.requests:  # the readable buffers, as the harness wrote them
        offset = 0
        for gpa, n, w in request[0]:
            if not w:
                if data[gpa - DATA: gpa - DATA + n] != request[1][offset: offset + n]:
                    raise HarnessFailure(f"a device-readable buffer at {gpa:#x} (+{n}) changed")
                offset += n
    laid = sum(n for request in ring.requests for _, n, _ in request[0])
    if any(data[laid:]):
        raise HarnessFailure("the device wrote past the buffers of the ring's chains")
    if image_after != bytes(want):
        raise HarnessFailure("the image changed outside what the requests asked")


def image_bytes(device: Any) -> bytes:
    return os.pread(device.fd, SECTORS * blk.SECTOR + 1, 0)  # one byte more: the size must not grow


def reset_image(read_only: bool) -> None:
    with open(IMAGES[read_only], "r+b") as image:
        image.write(IMAGE_START)
        image.truncate()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    inp = Input(data[1:])
    packed, read_only = bool(data[0] & 1), bool(data[0] & 2)
    features = int(Feature.VERSION_1 | (Feature.RING_PACKED if packed else 0)
                   | (Feature.EVENT_IDX if data[0] & 4 else 0))
    device = DEVICES[read_only]
    start = inp.pos
    results = []
    for serve in (serve_c, serve_python):
        inp.pos = start
        ring = Ring(inp, packed, features)
        reset_image(read_only)
        before = image_bytes(device)
        serve(ring, device, features, bool(data[0] & 8))
        ring.guest.check_canaries()
        after = image_bytes(device)
        if serve is serve_c:
            check_answers(ring, before, after)
        results.append((ring.used(), ring.data_bytes(), after, bytes(ring.record)))
    (c_used, c_data, c_image, c_record), (py_used, py_data, py_image, py_record) = results
    if c_used != py_used:
        raise HarnessFailure(f"used elements: C executor {c_used} != BlkDevice.handle {py_used}")
    if c_data != py_data:
        at = harness.first_difference(c_data, py_data)
        raise HarnessFailure(f"the data buffers differ at {DATA + at:#x}: C {c_data[at]} != Python {py_data[at]}")
    if c_image != py_image:
        raise HarnessFailure("the C executor and BlkDevice.handle leave different images")
    if c_record != py_record:
        at = harness.first_difference(c_record, py_record)
        raise HarnessFailure(f"the inflight records differ at byte {at}: C {c_record[at]} != Python {py_record[at]}")


if __name__ == "__main__":
    harness.fuzz(test_one_input)
