"""The other process of the two-process tests: a device serving a driver, or a descriptor flipper.

Run as ``python peer.py ROLE FD ...``; guest memory is the memfd FD, mapped at guest-physical address 0.
"""

from __future__ import annotations

import os
import select
import struct
import sys
import zlib

REQ = struct.Struct("<QQI")  # seq, salt, crc32 of the payload that follows
REPLY = struct.Struct("<QQII")  # seq, salt ^ mask, crc32 the device computed, payload length


def wait(fd: int, timeout_s: float) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(int(timeout_s * 1000)):
        raise SystemExit(f"peer: no notification in {timeout_s} s")
    os.eventfd_read(fd)


def device(fd: int, mem_size: int, size: int, features: int, n: int, kick: int, call: int) -> None:
    import vring
    from vring.notify import serve_until_idle

    mem = vring.GuestMemory()
    mem.add_region_fd(0, mem_size, fd)
    dev = vring.create_device_queue(mem, vring.contiguous_layout(features, size, 0), features)

    def serve_batch() -> int:
        chains = dev.pop_many(64)
        if not chains:
            return 0
        lens = []
        for chain in chains:
            request = chain.read()
            seq, salt, crc = REQ.unpack_from(request)
            payload = request[REQ.size:]
            reply = REPLY.pack(seq, salt ^ 0x5A5A5A5A5A5A5A5A, zlib.crc32(payload), len(payload))
            lens.append(chain.write(reply + payload[::-1]))
        dev.push_many([c.head for c in chains], lens)
        if dev.notify_needed():
            os.eventfd_write(call, 1)
        return len(chains)

    served = serve_until_idle(dev, serve_batch)
    while served < n:
        wait(kick, 20)
        served += serve_until_idle(dev, serve_batch)


def flipper(fd: int, mem_size: int, gpa: int, good: bytes, bad: bytes, stop_gpa: int) -> None:
    """Flip the descriptor at ``gpa`` between two values until the byte at ``stop_gpa`` becomes non-zero."""
    import mmap

    m = mmap.mmap(fd, mem_size)
    m[stop_gpa + 1] = 1  # tell the test we are running
    while not m[stop_gpa]:
        for _ in range(256):
            m[gpa:gpa + 16] = bad
            m[gpa:gpa + 16] = good


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "device":
        device(*(int(a, 0) for a in sys.argv[2:]))
    elif role == "flipper":
        fd, mem_size, gpa = (int(a, 0) for a in sys.argv[2:5])
        flipper(fd, mem_size, gpa, bytes.fromhex(sys.argv[5]), bytes.fromhex(sys.argv[6]), int(sys.argv[7], 0))
    else:
        raise SystemExit(f"unknown role {role}")
