"""Fuzz virtio-blk requests: ``Request.parse`` and ``BlkDevice.handle`` on fuzzed chains over a small scratch image.

Each request is one chain of a split ring (popped by the Cython twin, so that its buffers are real guest memory).
Input format, repeated: u8 segment count (count % 6 + 1), u8 index of the first device-writable segment, one u16
length per segment (buffers laid one after the other from ``DATA``, crossing into the adjacent region), then the
readable bytes (header: u32 type, u32 reserved, u64 sector; then the data). Invariants: ``parse`` raises only
``RequestError``s, ``handle`` never raises and answers OK, IOERR or UNSUPP in the chain's last writable byte (or
nothing when there is no writable byte), says it wrote no more than the chain holds, and the image changes only
where an OK write, discard or write-zeroes says (its size never). Guest memory canaries stay intact.
Run: ``python fuzz/fuzz_blk_request.py -max_total_time=60 CORPUS_DIR``.
"""

import logging
import os
import struct
import tempfile

import harness
from guest import DATA, DATA_END, RING, CanaryMemory, HarnessFailure, Input, timed

from vring import Feature, contiguous_layout, create_device_queue

with harness.instrumented():
    from vring.devices import blk

SECTORS = 16
QUEUE_SIZE = 8
MAX_REQUESTS = 8
logging.getLogger("vring").setLevel(logging.CRITICAL)  # the device logs every malformed request

scratch = tempfile.TemporaryDirectory(prefix="vring-fuzz-blk-")
IMAGE = os.path.join(scratch.name, "disk.img")
with open(IMAGE, "wb") as f:
    f.write(bytes(SECTORS * blk.SECTOR))
device = blk.BlkDevice(IMAGE)
FEATURES = int(Feature.VERSION_1)


def image_bytes() -> bytearray:
    return bytearray(os.pread(device.fd, SECTORS * blk.SECTOR + 1, 0))  # one byte more: the size must not grow


def expected_image(before: bytearray, rtype: int, sector: int, data: bytes, status: int) -> bytearray:
    """The image after an answered request: changed only by an OK write, discard or write-zeroes."""
    after = bytearray(before)
    if status != blk.S_OK:
        return after
    if rtype == blk.T_OUT:
        after[sector * blk.SECTOR: sector * blk.SECTOR + len(data)] = data
    elif rtype in (blk.T_DISCARD, blk.T_WRITE_ZEROES):
        for k in range(len(data) // blk.DISCARD_SEG.size):
            start, count, _ = blk.DISCARD_SEG.unpack_from(data, k * blk.DISCARD_SEG.size)
            after[start * blk.SECTOR: (start + count) * blk.SECTOR] = bytes(count * blk.SECTOR)
    return after


def one_request(inp: Input, guest: CanaryMemory, queue: object, layout: object, slot: int) -> None:
    nseg = inp.u8() % 6 + 1
    first_writable = inp.u8() % (nseg + 1)
    addr = DATA
    segments = []
    for k in range(nseg):
        length = inp.u16() % 0x200 + 1
        if addr + length > DATA_END:
            break
        segments.append((addr, length, k >= first_writable))
        addr += length
    readable_len = sum(n for _, n, w in segments if not w)
    readable = inp.take(readable_len)
    for gpa, _, _ in segments:  # the writable buffers start as garbage the device must not trust
        guest.write(gpa, bytes([0xEE]) * 0x200)
    offset = 0
    for gpa, n, writable in segments:
        if not writable:
            guest.write(gpa, readable[offset: offset + n])
            offset += n
    for k, (gpa, n, writable) in enumerate(segments):
        more = k + 1 < len(segments)
        flags = (1 if more else 0) | (2 if writable else 0)  # NEXT, WRITE
        guest.write(layout.desc + 16 * k, struct.pack("<QIHH", gpa, n, flags, k + 1 if more else 0))
    guest.write(layout.avail + 4 + 2 * (slot % QUEUE_SIZE), struct.pack("<H", 0))
    guest.write(layout.avail + 2, struct.pack("<H", (slot + 1) & 0xFFFF))
    chain = timed(queue.pop)
    if chain is None:
        raise HarnessFailure("the harness's well-formed chain did not pop")

    try:
        request = blk.Request.parse(chain)
    except blk.RequestError:
        request = None
    except Exception as err:
        raise HarnessFailure(f"Request.parse raised {type(err).__name__}: {err}") from err
    if request is not None and request.data_len > max(chain.readable_len, chain.writable_len):
        raise HarnessFailure(f"request data of {request.data_len} bytes in a chain of {chain.segments}")

    before = image_bytes()
    header = readable[:blk.HEADER.size]
    rtype, _, sector = blk.HEADER.unpack(header) if len(header) == blk.HEADER.size else (None, 0, 0)
    try:
        written = timed(device.handle, 0, chain)
    except Exception as err:
        raise HarnessFailure(f"BlkDevice.handle raised {type(err).__name__}: {err}") from err
    guest.check_canaries()
    if not 0 <= written <= chain.writable_len:
        raise HarnessFailure(f"handle says {written} bytes written into {chain.writable_len} writable bytes")
    status = None
    if chain.writable_len:
        gpa, n, _ = chain.segments[-1]
        status = guest.mem.read(gpa + n - 1, 1)[0]
        if status not in (blk.S_OK, blk.S_IOERR, blk.S_UNSUPP):
            raise HarnessFailure(f"status byte {status} is not OK, IOERR or UNSUPP")
    data = readable[blk.HEADER.size:]
    want = expected_image(before, rtype, sector, data, status) if rtype is not None else before
    if image_bytes() != want:
        raise HarnessFailure(f"request type {rtype} at sector {sector} (status {status}) changed the image "
                             "outside what it asked")
    timed(queue.push, chain.head, written)


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    guest = CanaryMemory(harness.CYTHON)
    layout = contiguous_layout(FEATURES, QUEUE_SIZE, RING, align=4)
    queue = create_device_queue(guest.mem, layout, FEATURES, twin=harness.CYTHON)
    os.pwrite(device.fd, bytes(SECTORS * blk.SECTOR), 0)
    os.ftruncate(device.fd, SECTORS * blk.SECTOR)
    for slot in range(MAX_REQUESTS):
        if not inp.more():
            break
        one_request(inp, guest, queue, layout, slot)


if __name__ == "__main__":
    harness.fuzz(test_one_input)
