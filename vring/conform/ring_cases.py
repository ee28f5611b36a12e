"""Malformed rings: chains and ring fields a hostile driver writes straight into the shared memory (spec 2.7 for
split rings, 2.8 for packed ones). Every request writes the pattern already on the disk to the pattern's sector,
so that a back-end executing it as a well-formed write changes nothing, and one writing anything else shows."""

from __future__ import annotations

from .._features import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, EVENT_FLAG_DESC, Feature
from ..devices.blk import HEADER, T_IN, T_OUT
from .cases import PATTERN_SECTOR, Case
from .guest import TABLES_GPA
from .rings import DESC, PackedRing, SplitRing
from .session import DEFAULT_FEATURES, QUEUE_SIZE, Session, Submitted

PACKED = DEFAULT_FEATURES | Feature.RING_PACKED
NO_INDIRECT = DEFAULT_FEATURES & ~Feature.INDIRECT_DESC


def _write_parts(s: Session, pattern: bytes) -> tuple[int, int, int]:
    """A write request's header, data (the pattern) and primed status byte, in guest memory."""
    return s.header(T_OUT, PATTERN_SECTOR), s.buffer(pattern), s.status_byte()


def _split(s: Session) -> SplitRing:
    assert isinstance(s.ring, SplitRing)
    return s.ring


def _packed(s: Session) -> PackedRing:
    assert isinstance(s.ring, PackedRing)
    return s.ring


def _hand_made(s: Session, descs: list[tuple[int, int, int, int]], status: int | None) -> Submitted:
    """Split-ring descriptors (addr, len, flags, next) written at slots 0.. as given, head 0 published."""
    ring = _split(s)
    ring.take_slots(len(descs))
    readonly = s.readonly([(a, n, f) for a, n, f, _ in descs])
    for slot, (addr, length, flags, nxt) in enumerate(descs):
        ring.write_desc(slot, addr, length, flags, nxt)
    ring.publish(0)
    s.kick()
    return Submitted(0, status, readonly=readonly)


def _table(s: Session, descs: list[tuple[int, int, int, int]], at: int = TABLES_GPA) -> int:
    """An indirect table of split-layout descriptors at ``at``; returns its length in bytes."""
    for i, (addr, length, flags, nxt) in enumerate(descs):
        s.guest.write(at + DESC.size * i, DESC.pack(addr, length, flags, nxt))
    return DESC.size * len(descs)


def _indirect(s: Session, pattern: bytes, length: int | None = None) -> Submitted:
    """A write request in a well-formed indirect table, referred to with ``length`` (default: the right one)."""
    header, data, status = _write_parts(s, pattern)
    size = _table(s, [(header, HEADER.size, DESC_F_NEXT, 1), (data, len(pattern), DESC_F_NEXT, 2),
                      (status, 1, DESC_F_WRITE, 0)])
    return _hand_made(s, [(TABLES_GPA, size if length is None else length, DESC_F_INDIRECT, 0)], status)


# -- split rings -----------------------------------------------------------------------------------------------
def desc_loop(s: Session, pattern: bytes) -> Submitted:
    # Header and data link to each other: an endless chain of device-readable buffers, no status byte ever.
    header, data, _status = _write_parts(s, pattern)
    return _hand_made(s, [(header, HEADER.size, DESC_F_NEXT, 1), (data, len(pattern), DESC_F_NEXT, 0)], None)


def next_out_of_range(s: Session, pattern: bytes) -> Submitted:
    header, data, status = _write_parts(s, pattern)
    return _hand_made(s, [(header, HEADER.size, DESC_F_NEXT, 1), (data, len(pattern), DESC_F_NEXT, QUEUE_SIZE + 3),
                          (status, 1, DESC_F_WRITE, 0)], status)


def indirect_nested(s: Session, pattern: bytes) -> Submitted:
    header, data, status = _write_parts(s, pattern)
    inner = TABLES_GPA + 0x1000
    inner_size = _table(s, [(status, 1, DESC_F_WRITE, 0)], at=inner)
    size = _table(s, [(header, HEADER.size, DESC_F_NEXT, 1), (data, len(pattern), DESC_F_NEXT, 2),
                      (inner, inner_size, DESC_F_INDIRECT, 0)])
    return _hand_made(s, [(TABLES_GPA, size, DESC_F_INDIRECT, 0)], status)


def indirect_unnegotiated(s: Session, pattern: bytes) -> Submitted:
    return _indirect(s, pattern)


def indirect_len_zero(s: Session, pattern: bytes) -> Submitted:
    return _indirect(s, pattern, 0)


def indirect_len_odd(s: Session, pattern: bytes) -> Submitted:
    return _indirect(s, pattern, DESC.size * 2 + 8)


def indirect_len_huge(s: Session, pattern: bytes) -> Submitted:
    return _indirect(s, pattern, 0xFFFF_FFF0)


def _data_at(s: Session, pattern: bytes, addr: int) -> Submitted:
    """A write request whose data buffer is at ``addr`` (its bytes, where they are guest memory, the pattern)."""
    header, status = s.header(T_OUT, PATTERN_SECTOR), s.status_byte()
    return s.submit([(header, HEADER.size, 0), (addr, len(pattern), 0), (status, 1, DESC_F_WRITE)], status)


def buffer_outside(s: Session, pattern: bytes) -> Submitted:
    return _data_at(s, pattern, 0x1000)  # below the first region (at 4 GiB): no memory there


def buffer_across_hole(s: Session, pattern: bytes) -> Submitted:
    start = s.guest.region0_end - len(pattern) // 2
    s.guest.write(start, pattern[:len(pattern) // 2])
    return _data_at(s, pattern, start)


def buffer_wraps(s: Session, pattern: bytes) -> Submitted:
    return _data_at(s, pattern, (1 << 64) - len(pattern) // 2)


def buffer_second_region(s: Session, pattern: bytes) -> Submitted:
    addr = s.guest.region1.gpa + 0x1000
    s.guest.write(addr, pattern)
    return _data_at(s, pattern, addr)


def avail_far_ahead(s: Session, pattern: bytes) -> Submitted:
    submitted = s.submit_write(PATTERN_SECTOR, pattern)
    _split(s).set_avail_idx(1000)  # 1000 available on a ring of 16: every avail entry but one is garbage
    s.kick()
    return submitted


def status_readonly(s: Session, pattern: bytes) -> Submitted:
    header, data, status = _write_parts(s, pattern)
    submitted = s.submit([(header, HEADER.size, 0), (data, len(pattern), 0), (status, 1, 0)], None)
    return submitted  # the status byte is device-readable: ``readonly`` holds it, primed, with the rest


def header_short(s: Session, pattern: bytes) -> Submitted:
    header, status = s.header(T_IN, PATTERN_SECTOR), s.status_byte()
    data = s.guest.alloc(len(pattern))
    return s.submit([(header, 8, 0), (data, len(pattern), DESC_F_WRITE), (status, 1, DESC_F_WRITE)], status,
                    data, len(pattern))


def header_split(s: Session, pattern: bytes) -> Submitted:
    header, data, status = _write_parts(s, pattern)
    return s.submit([(header, 8, 0), (header + 8, 8, 0), (data, len(pattern), 0), (status, 1, DESC_F_WRITE)],
                    status)


def used_event_far(s: Session, pattern: bytes) -> Submitted:
    _split(s).set_used_event(0x8000)  # interrupt only once the used index passes 0x8000: never, here
    return s.submit_write(PATTERN_SECTOR, pattern)


# -- packed rings ----------------------------------------------------------------------------------------------
def packed_head_wrong_lap(s: Session, pattern: bytes) -> None:
    """A chain whose head carries the AVAIL/USED bits of the previous lap: not available, to be ignored."""
    ring = _packed(s)
    header, data, status = _write_parts(s, pattern)
    for slot, (addr, length, flags) in reversed(list(enumerate(
            [(header, HEADER.size, DESC_F_NEXT), (data, len(pattern), DESC_F_NEXT), (status, 1, DESC_F_WRITE)]))):
        ring.write_desc(slot, addr, length, 0, flags | ring.avail_flags(not ring.wrap))
    s.kick()
    return None


def packed_mid_chain_wrong_lap(s: Session, pattern: bytes) -> Submitted:
    ring = _packed(s)
    header, data, status = _write_parts(s, pattern)
    readonly = s.readonly([(header, HEADER.size, 0), (data, len(pattern), 0)])
    ring.take_slots(3)
    ring.chain_length[0] = 3
    ring.write_desc(2, status, 1, 0, DESC_F_WRITE | ring.avail_flags())
    ring.write_desc(1, data, len(pattern), 0, DESC_F_NEXT | ring.avail_flags(not ring.wrap))
    ring.write_desc(0, header, HEADER.size, 0, DESC_F_NEXT | ring.avail_flags())
    s.kick()
    return Submitted(0, status, readonly=readonly)


def packed_bad_id(s: Session, pattern: bytes) -> Submitted:
    ring = _packed(s)
    header, data, status = _write_parts(s, pattern)
    buffers = [(header, HEADER.size, 0), (data, len(pattern), 0), (status, 1, DESC_F_WRITE)]
    readonly = s.readonly(buffers)
    ident = ring.add(buffers, buffer_id=0xFFFF)
    s.kick()
    return Submitted(ident, status, readonly=readonly)


def packed_indirect_len_odd(s: Session, pattern: bytes) -> Submitted:
    ring = _packed(s)
    header, data, status = _write_parts(s, pattern)
    # Packed indirect tables hold packed descriptors: addr, len, id (unused), flags (no NEXT: they are in order).
    for i, (addr, length, flags) in enumerate([(header, HEADER.size, 0), (data, len(pattern), 0),
                                               (status, 1, DESC_F_WRITE)]):
        s.guest.write(TABLES_GPA + DESC.size * i, DESC.pack(addr, length, 0, flags))
    readonly = s.readonly([(header, HEADER.size, 0), (data, len(pattern), 0)])
    ident = ring.add([(TABLES_GPA, DESC.size * 2 + 8, DESC_F_INDIRECT)])
    s.kick()
    return Submitted(ident, status, readonly=readonly)


def packed_driver_event_far(s: Session, pattern: bytes) -> Submitted:
    _packed(s).set_driver_event(0x7FF0 | 1 << 15, EVENT_FLAG_DESC)  # a slot far past the ring's 16
    return s.submit_write(PATTERN_SECTOR, pattern)


def _case(name: str, summary: str, attack, **options) -> Case:
    return Case(f"ring.{name}", summary, "ring", attack, **options)


RING_CASES = [
    _case("desc-loop", "a chain of two readable descriptors linked to each other", desc_loop, impossible=True),
    _case("next-out-of-range", f"a next index past the ring's {QUEUE_SIZE} descriptors", next_out_of_range,
          impossible=True),
    _case("indirect-nested", "an indirect descriptor inside an indirect table", indirect_nested,
          needs=Feature.INDIRECT_DESC),
    _case("indirect-unnegotiated", "an indirect table without INDIRECT_DESC negotiated", indirect_unnegotiated,
          features=NO_INDIRECT),
    _case("indirect-len-zero", "an indirect table of 0 bytes", indirect_len_zero, needs=Feature.INDIRECT_DESC,
          impossible=True),
    _case("indirect-len-odd", "an indirect table of 40 bytes (not a multiple of 16)", indirect_len_odd,
          needs=Feature.INDIRECT_DESC, impossible=True),
    _case("indirect-len-huge", "an indirect table of 4 GiB", indirect_len_huge, needs=Feature.INDIRECT_DESC,
          impossible=True),
    _case("buffer-outside", "a data buffer in no memory region", buffer_outside, impossible=True),
    _case("buffer-across-hole", "a data buffer from the end of region 0 into the hole after it",
          buffer_across_hole, impossible=True),
    _case("buffer-wraps", "a data buffer whose end wraps past 2^64", buffer_wraps, impossible=True),
    _case("buffer-second-region", "a data buffer in region 1, after the hole (well-formed)", buffer_second_region),
    _case("avail-far-ahead", f"an avail index 1000 ahead on a ring of {QUEUE_SIZE}", avail_far_ahead),
    _case("status-readonly", "a status byte the device may not write", status_readonly, impossible=True),
    _case("header-short", "a read whose header is 8 bytes", header_short, impossible=True),
    _case("header-split", "a header split over two descriptors of 8 bytes (well-formed)", header_split),
    _case("used-event-far", "used_event 0x8000 away (EVENT_IDX): served, with no interrupt due", used_event_far,
          needs=Feature.EVENT_IDX),
    _case("packed-head-wrong-lap", "a packed head with the previous lap's AVAIL/USED bits (to be ignored)",
          packed_head_wrong_lap, features=PACKED, needs=Feature.RING_PACKED),
    _case("packed-mid-chain-wrong-lap", "a packed chain whose second descriptor has the previous lap's bits",
          packed_mid_chain_wrong_lap, features=PACKED, needs=Feature.RING_PACKED),
    _case("packed-bad-id", "a packed chain with buffer id 0xffff on a ring of 16", packed_bad_id, features=PACKED,
          needs=Feature.RING_PACKED),
    _case("packed-indirect-len-odd", "a packed indirect table of 40 bytes", packed_indirect_len_odd,
          features=PACKED, needs=Feature.RING_PACKED | Feature.INDIRECT_DESC, impossible=True),
    _case("packed-driver-event-far", "a packed driver event naming slot 0x7ff0 (EVENT_IDX)",
          packed_driver_event_far, features=PACKED, needs=Feature.RING_PACKED | Feature.EVENT_IDX),
]
