"""Write the seed corpora of the harnesses into ``fuzz/corpus/<harness>/``: a handful of small, meaningful inputs
each (a valid chain, an indirect chain, a packed chain, a device that returns what it was given, a vhost-user
session that sets up a ring...). The input formats are in each harness's docstring. Run from the repository:
``python fuzz/make_corpus.py`` (it rewrites the seeds it owns and leaves other files alone)."""

from __future__ import annotations

import os
import struct

from vring import Feature, contiguous_bytes

RING, TABLES, DATA = 0x1000, 0x2000, 0x8000  # as fuzz/guest.py lays out guest memory
NEXT, WRITE, INDIRECT, AVAIL, USED = 1, 2, 4, 1 << 7, 1 << 15
DESC = struct.Struct("<QIHH")
TABLE_BYTES = 256
HERE = os.path.dirname(os.path.abspath(__file__))


def op(opcode: int, arg: int = 0, value: int = 0) -> bytes:
    return struct.pack("<BBH", opcode, arg, value)


def device_input(size_code: int, bits: int, ring: dict[int, bytes], table: bytes, ops: bytes, packed: bool) -> bytes:
    """The device programs' input: header, ring area (``ring`` maps offsets to bytes), tables, operations."""
    features = Feature.VERSION_1 | (Feature.RING_PACKED if packed else 0) | (
        Feature.INDIRECT_DESC if bits & 1 else 0) | (Feature.EVENT_IDX if bits & 2 else 0)
    area = bytearray(contiguous_bytes(features, 1 << size_code, align=4))
    for offset, data in ring.items():
        area[offset: offset + len(data)] = data
    return bytes([size_code, bits, 0]) + bytes(area) + table.ljust(TABLE_BYTES, b"\0") + ops


def split_avail(size: int, *heads: int) -> dict[int, bytes]:
    """The avail ring of a split ring of ``size`` with ``heads`` published (flags, idx, ring)."""
    return {16 * size: struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)}


SERVE = op(0) + op(3, 0, 64) + op(6)  # pop, push what the chain holds, ask whether to notify
DEVICE_SPLIT = {
    "one-writable": device_input(2, 0, {0: DESC.pack(DATA, 64, WRITE, 0), **split_avail(4, 0)}, b"", SERVE, False),
    "read-then-write": device_input(2, 2, {0: DESC.pack(DATA, 16, NEXT, 1) + DESC.pack(DATA + 16, 64, WRITE, 0),
                                           **split_avail(4, 0)}, b"", op(1, 3) + op(4, 0, 64) + op(6), False),
    "indirect": device_input(2, 1, {0: DESC.pack(TABLES, 32, INDIRECT, 0), **split_avail(4, 0)},
                             DESC.pack(DATA, 16, NEXT, 1) + DESC.pack(DATA + 16, 64, WRITE, 0),
                             op(2, 1, 15) + op(5, 0, 64) + op(6), False),
    "cross-region": device_input(1, 0, {0: DESC.pack(DATA + 0x7F0, 32, WRITE, 0), **split_avail(2, 0)}, b"",
                                 op(0) + op(3, 0, 32) + op(9, 0) + op(0) + op(10), False),
    "loop": device_input(1, 0, {0: DESC.pack(DATA, 8, NEXT, 1) + DESC.pack(DATA, 8, NEXT, 0),
                                **split_avail(2, 0)}, b"", op(0) + op(10) + op(12), False),
}


def packed_desc(slot: int, addr: int, length: int, ident: int, flags: int) -> dict[int, bytes]:
    return {16 * slot: DESC.pack(addr, length, ident, flags | AVAIL)}


DEVICE_PACKED = {
    "one-writable": device_input(2, 0, packed_desc(0, DATA, 64, 0, WRITE), b"", SERVE, True),
    "chain": device_input(2, 2, {**packed_desc(0, DATA, 16, 1, NEXT), **packed_desc(1, DATA + 16, 64, 1, WRITE)},
                          b"", op(1, 3) + op(4, 0, 64) + op(6) + op(7, 1), True),
    "indirect": device_input(2, 1, packed_desc(0, TABLES, 32, 0, INDIRECT),
                             DESC.pack(DATA, 16, 0, 0) + DESC.pack(DATA + 16, 64, 0, WRITE),
                             op(2, 1, 15) + op(5, 0, 64) + op(6), True),
    "wrap": device_input(0, 0, packed_desc(0, DATA, 8, 0, WRITE), b"",
                         SERVE + op(9, 0x00, WRITE) + op(0) + op(3, 0, 8), True),
}


def driver_add(out: list[tuple[int, int]], in_: list[tuple[int, int]]) -> bytes:
    data = op(0, len(out) | len(in_) << 2)
    for addr, length in out + in_:
        data += struct.pack("<HH", addr - DATA, length - 1)
    return data


def used_split(position: int, ident: int, written: int) -> bytes:
    return op(3, position, ident) + struct.pack("<I", written)


def used_packed(slot: int, ident: int, written: int, flags: int) -> bytes:
    return op(3, slot, ident) + struct.pack("<IH", written, flags)


ROUND_TRIP = driver_add([(DATA, 16)], [(DATA + 16, 64)]) + op(2)
DRIVER = {  # first byte: 0 split, 1 packed
    "split-round-trip": b"\0" + bytes([2, 0, 0]) + ROUND_TRIP + used_split(0, 0, 64) + op(4, 0, 1) + op(6),
    "split-indirect-batch": b"\0" + bytes([2, 1, 3]) + op(1, 1, 1) + struct.pack("<HHHH", 0, 15, 16, 63) + op(2)
    + used_split(0, 0, 8) + used_split(1, 1, 8) + op(4, 0, 2) + op(8, 3),
    "packed-round-trip": b"\1" + bytes([2, 0, 0]) + ROUND_TRIP + used_packed(0, 0, 64, AVAIL | USED | WRITE)
    + op(7, 1),
    "packed-in-order": b"\1" + bytes([2, 4, 0]) + ROUND_TRIP + ROUND_TRIP + used_packed(0, 1, 64, AVAIL | USED)
    + op(7, 1) + op(11),
    "split-too-long": b"\0" + bytes([2, 2, 0]) + used_split(0, 0, 64) + op(4, 0, 1) + op(6),
}

TWINS = {f"device-split-{k}": b"\0" + v for k, v in DEVICE_SPLIT.items()}
TWINS.update({f"device-packed-{k}": b"\1" + v for k, v in DEVICE_PACKED.items()})
TWINS.update({f"driver-{k}": bytes([2 + v[0]]) + v[1:] for k, v in DRIVER.items()})


def blk_request(rtype: int, sector: int, data: bytes, lengths: list[int], first_writable: int) -> bytes:
    header = struct.pack("<IIQ", rtype, 0, sector)
    return (bytes([len(lengths) - 1, first_writable]) + b"".join(struct.pack("<H", n - 1) for n in lengths)
            + header + data)


BLK = {
    "write": blk_request(1, 1, b"\x42" * 512, [16, 512, 1], 2),
    "read": blk_request(0, 2, b"", [16, 512, 1], 1),
    "get-id": blk_request(8, 0, b"", [16, 20, 1], 1),
    "flush": blk_request(4, 0, b"", [16, 1], 1),
    "discard": blk_request(11, 3, struct.pack("<QII", 3, 2, 0), [32, 1], 1),
    "write-zeroes-split-header": blk_request(13, 0, struct.pack("<QII", 0, 1, 1), [8, 24, 1], 2),
    "short-header": blk_request(1, 0, b"", [8, 1], 1),
    "no-status": blk_request(0, 0, b"", [16], 1),
}


def crash(*scribbles: tuple[int, bytes], value: int = 0) -> bytes:
    """fuzz_inflight's crash operation: the device dies, ``scribbles`` (offset, bytes) land on its record, a new
    device restores (value bit 0: at a fuzzed base) and attaches the record."""
    return op(0xF0, len(scribbles), value) + b"".join(struct.pack("<HB", at, len(data) - 1) + data
                                                      for at, data in scribbles)


THREE_SPLIT = {**{16 * k: DESC.pack(DATA + 64 * k, 64, WRITE, 0) for k in range(3)}, **split_avail(4, 0, 1, 2)}
THREE_PACKED = {k: v for s in range(3) for k, v in packed_desc(s, DATA + 64 * s, 64, s, WRITE).items()}
HOLD_TWO = op(0) + op(0) + op(0) + op(3, 1, 64)  # pop three chains, push the middle one: two in flight
RESUME = op(1, 3) + op(4, 0, 64) + op(4, 1, 64)  # pop what is given back, push it
INFLIGHT = {  # first byte: 0 split, 1 packed
    "split-crash": b"\0" + device_input(2, 0, THREE_SPLIT, b"", HOLD_TWO + crash() + RESUME, False),
    "split-crash-twice": b"\0" + device_input(2, 2, THREE_SPLIT, b"", HOLD_TWO + crash() + op(0) + crash()
                                               + RESUME, False),
    "split-scribble": b"\0" + device_input(2, 0, THREE_SPLIT, b"", HOLD_TWO + crash((16, b"\2"), (24, b"\1"))
                                            + RESUME, False),
    "packed-crash": b"\1" + device_input(2, 0, THREE_PACKED, b"", HOLD_TWO + crash() + RESUME, True),
    "packed-scribble": b"\1" + device_input(2, 0, THREE_PACKED, b"", HOLD_TWO + crash((34, b"\2\0"), (12, b"\3"))
                                             + RESUME, True),
    "packed-scribble-running": b"\1" + device_input(2, 0, THREE_PACKED, b"", HOLD_TWO + op(0xE0, 2)
                                                     + struct.pack("<HB", 32, 7) + b"\xff" * 8
                                                     + struct.pack("<HB", 12, 1) + b"\x09\x00" + RESUME + crash(),
                                                     True),
    "split-scribble-running": b"\0" + device_input(2, 0, THREE_SPLIT, b"", HOLD_TWO + op(0xE0, 1)
                                                    + struct.pack("<HB", 12, 3) + b"\x07\x00\x09\x00" + RESUME
                                                    + crash(), False),
    "packed-fuzzed-base": b"\1" + device_input(2, 0, THREE_PACKED, b"", HOLD_TWO + crash(value=0x0105) + RESUME,
                                                True),
}


BLK_RING = blk_request(1, 1, b"\x42" * 512, [16, 256, 256, 1], 3) + blk_request(0, 1, b"", [16, 256, 257], 1) \
    + blk_request(8, 0, b"", [16, 21], 1) + blk_request(4, 0, b"", [16, 1], 1)
BLK_WORKER = {  # first byte: bit 0 packed, bit 1 read-only, bit 2 EVENT_IDX, bit 3 an inflight record
    "split": b"\0" + BLK_RING,
    "packed": b"\1" + BLK_RING,
    "split-read-only-event-idx": b"\6" + BLK_RING,
    "split-inflight": b"\x08" + BLK_RING,
    "packed-inflight-event-idx": b"\x0d" + BLK_RING,
    "zeroes-discard": b"\5" + blk_request(13, 0, struct.pack("<QII", 2, 3, 1), [32, 1], 1)
    + blk_request(11, 0, struct.pack("<QII", 6, 2, 0), [16, 16, 1], 2) + blk_request(0, 0, b"", [16, 256, 1], 1)
    + blk_request(99, 0, b"", [16, 1], 1) + blk_request(1, 15, b"\1" * 1024, [16, 256, 256, 256, 256, 1], 5),
    "bad-requests": b"\0" + blk_request(1, 0, b"", [8, 1], 1) + blk_request(0, 0, b"", [16], 1)
    + blk_request(0, 16, b"", [16, 256, 1], 1) + blk_request(1, 0, b"\7" * 100, [16, 100, 1], 2),
}


def message(request: int, payload: bytes = b"", fds: int = 0, flags: int = 0) -> bytes:
    return bytes([request, flags, fds, len(payload)]) + payload


UADDR = 0x7F0000000000
SET_UP_RING = (message(1) + message(2, struct.pack("<Q", 1 << 32 | 1 << 30)) + message(3)
               + message(15) + message(16, struct.pack("<Q", 1 | 1 << 3))
               + message(5, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 1 << 16, UADDR, 0), fds=1)
               + message(8, struct.pack("<II", 0, 8))
               + message(9, struct.pack("<IIQQQQ", 0, 0, UADDR, UADDR + 0x200, UADDR + 0x100, 0))
               + message(10, struct.pack("<II", 0, 0))
               + message(12, struct.pack("<Q", 0), fds=2) + message(13, struct.pack("<Q", 0), fds=2)
               + message(18, struct.pack("<II", 0, 1)) + message(255) + message(11, struct.pack("<II", 0, 0)))
VHOST_USER = {
    "get-features": message(1),
    "negotiate": message(1) + message(2, struct.pack("<Q", 1 << 32)) + message(3) + message(17, flags=1),
    "set-up-ring": SET_UP_RING,
    "config": message(15) + message(16, struct.pack("<Q", 1 << 9)) + message(24, struct.pack("<III", 0, 8, 0)),
    "mem-slots": message(36) + message(37, struct.pack("<QQQQQ", 0, 0, 1 << 16, UADDR, 0), fds=1)
    + message(38, struct.pack("<QQQQQ", 0, 0, 1 << 16, UADDR, 0)),
    "pipe-as-kick": message(12, struct.pack("<Q", 0), fds=4) + message(255),
}

def inflight_description(num_queues: int, queue_size: int) -> bytes:
    """What GET_INFLIGHT_FD answers (and SET_INFLIGHT_FD hands back) for a split ring of ``queue_size``."""
    from vring.vhost_user.inflight import InflightBuffer

    buffer, fd = InflightBuffer.create(num_queues, queue_size, False)
    os.close(fd)
    buffer.close()
    return buffer.description.pack()


GET_INFLIGHT = message(31, inflight_description(1, 8))
SET_INFLIGHT = message(32, inflight_description(1, 8), fds=16)  # the buffer GET_INFLIGHT_FD sent
# A ring started with an inflight buffer, served, stopped, then started again from the same buffer (16 messages,
# the harness's most).
RING_WITH_INFLIGHT = (message(2, struct.pack("<Q", 1 << 32 | 1 << 30)) + message(16, struct.pack("<Q", 1 << 12))
                      + GET_INFLIGHT
                      + message(5, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 1 << 16, UADDR, 0), fds=1)
                      + message(8, struct.pack("<II", 0, 8))
                      + message(9, struct.pack("<IIQQQQ", 0, 0, UADDR, UADDR + 0x200, UADDR + 0x100, 0))
                      + message(10, struct.pack("<II", 0, 0)) + message(12, struct.pack("<Q", 0), fds=2)
                      + message(13, struct.pack("<Q", 0), fds=2) + message(18, struct.pack("<II", 0, 1))
                      + message(255) + message(11, struct.pack("<II", 0, 0)) + SET_INFLIGHT
                      + message(10, struct.pack("<II", 0, 0)) + message(12, struct.pack("<Q", 0), fds=2)
                      + message(255))
VHOST_USER.update({
    "inflight-fd": message(1) + message(2, struct.pack("<Q", 1 << 32 | 1 << 30)) + message(15)
    + message(16, struct.pack("<Q", 1 << 12)) + GET_INFLIGHT + SET_INFLIGHT,
    "ring-with-inflight": RING_WITH_INFLIGHT,
    "inflight-own-memfd": message(32, struct.pack("<QQHH4x", 4096, 0, 1, 8), fds=1) + SET_UP_RING,
    "inflight-bad": message(31, struct.pack("<QQHH4x", 0, 0, 2, 7)) + message(32, struct.pack("<QQHH4x", 1 << 20,
                                                                                            0, 1, 8), fds=1)
    + message(32, inflight_description(1, 8), fds=4) + message(32, b"\0" * 8, fds=1),
    "status": message(39, struct.pack("<Q", 0x0F)) + message(40) + message(34) + message(40, flags=1)
    + message(39, struct.pack("<Q", 0x1FF)),
})

CORPORA = {"device_split": DEVICE_SPLIT, "device_packed": DEVICE_PACKED, "driver": DRIVER, "twins": TWINS,
           "blk_request": BLK, "vhost_user": VHOST_USER, "inflight": INFLIGHT,
           "blk_worker": BLK_WORKER}


def main() -> None:
    for harness, seeds in CORPORA.items():
        folder = os.path.join(HERE, "corpus", harness)
        os.makedirs(folder, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
