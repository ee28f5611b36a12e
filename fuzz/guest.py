"""What every ring harness shares: a guest memory of several regions carved out of one host buffer with canary
bytes around each (so a write outside registered memory shows), a reader that turns fuzzed bytes into numbers, and
the invariant checks that are the same for every harness."""

from __future__ import annotations

import struct
import time
import types
from typing import Any, Callable, TypeVar

import vring

CANARY = 0xA5
CANARY_BYTES = 64
# (guest-physical address, size): the ring, then indirect tables, then two data regions adjacent in guest-physical
# address (a buffer may cross from one into the other) behind a hole, so that addresses in the hole are refused.
RING, TABLES, DATA, DATA2 = 0x1000, 0x2000, 0x8000, 0x8800
REGIONS = ((RING, 0x1000), (TABLES, 0x1000), (DATA, 0x800), (DATA2, 0x800))
DATA_END = DATA2 + 0x800
# A call of the engine that takes longer than this has looped (the rings hold at most 32 entries here).
CALL_SECONDS = 2.0

T = TypeVar("T")


class HarnessFailure(AssertionError):
    """An invariant of the harness does not hold: a bug in vring (or in the harness)."""


class Input:
    """Fuzzed bytes read front to back as little-endian numbers; past the end every read is 0."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos: self.pos + n]
        self.pos += n
        return chunk.ljust(n, b"\0")

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])


class CanaryMemory:
    """A GuestMemory of ``REGIONS`` on ``twin``, each region a slice of one bytearray between canary gaps."""

    def __init__(self, twin: types.ModuleType) -> None:
        self.buf = bytearray([CANARY]) * (CANARY_BYTES + sum(size + CANARY_BYTES for _, size in REGIONS))
        self.mem = twin.GuestMemory()
        self.offsets: dict[int, int] = {}  # region gpa -> offset in buf
        self._gaps: list[tuple[int, int]] = [(0, CANARY_BYTES)]
        offset = CANARY_BYTES
        view = memoryview(self.buf)
        for gpa, size in REGIONS:
            self.buf[offset: offset + size] = bytes(size)
            self.mem.add_region(gpa, view[offset: offset + size])
            self.offsets[gpa] = offset
            offset += size
            self._gaps.append((offset, CANARY_BYTES))
            offset += CANARY_BYTES

    def write(self, gpa: int, data: bytes) -> None:
        """Write ``data`` into one region, as the other side of the ring would (clipped to the region)."""
        for base, size in REGIONS:
            if base <= gpa < base + size:
                data = data[: base + size - gpa]
                start = self.offsets[base] + gpa - base
                self.buf[start: start + len(data)] = data
                return
        raise ValueError(f"{gpa:#x} is in no region of the harness")

    def regions_bytes(self) -> bytes:
        """Every region's bytes, in order (what two twins must agree on)."""
        return b"".join(bytes(self.buf[self.offsets[gpa]: self.offsets[gpa] + size]) for gpa, size in REGIONS)

    def check_canaries(self) -> None:
        for start, n in self._gaps:
            if self.buf[start: start + n] != bytes([CANARY]) * n:
                raise HarnessFailure(f"canary at host offset {start} overwritten: a write outside guest memory")


def timed(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, failing the run if it took longer than ``CALL_SECONDS`` (the engine must not loop)."""
    start = time.monotonic()
    try:
        return call(*args)
    finally:
        took = time.monotonic() - start
        if took > CALL_SECONDS:
            raise HarnessFailure(f"{getattr(call, '__name__', call)} took {took:.1f} s")


def outcome(err: BaseException) -> tuple[str, str]:
    """An error as a trace entry: its class and its message (the twins must word their errors alike)."""
    return type(err).__name__, str(err)


def check_vring_error(err: BaseException, allowed_caller_errors: tuple[str, ...] = ()) -> None:
    """Fail unless ``err`` is one of vring's own errors, or a caller error the harness provoked on purpose
    (``allowed_caller_errors``: beginnings of CALLER_ERRORS wordings)."""
    if isinstance(err, vring.VringError):
        return
    if isinstance(err, (ValueError, IndexError)) and str(err).startswith(allowed_caller_errors or ("\0",)):
        return
    raise HarnessFailure(f"not a vring error: {type(err).__name__}: {err}") from err


def check_broken(queue: Any, err: BaseException, side_error: type) -> None:
    """After the other side broke a rule (``side_error``), the queue is latched broken."""
    if isinstance(err, side_error) and not queue.broken:
        raise HarnessFailure(f"{type(err).__name__} did not latch the queue broken: {err}")
