"""Malformed vhost-user messages (QEMU docs/interop/vhost-user.rst): fields out of range, missing or extra file
descriptors, descriptors of the wrong kind, and requests out of order. Each attack runs on a connection that has
only negotiated; what it leaves of the standard set-up (memory, then queue 0) is done after it, and a well-formed
read on the same connection shows whether the back-end went on correctly."""

from __future__ import annotations

import fcntl
import os

from .. import inflight_region_size
from .._features import Feature
from ..vhost_user.protocol import FLAG_NEED_REPLY, INFLIGHT, U64, VERSION, VRING_NOFD_MASK, VRING_STATE, Request
from .cases import Case
from .guest import REGION_BYTES, Region
from .session import QUEUE_SIZE, Session, new_eventfd

FAR_QUEUE = 0xFFFF  # a queue index no back-end has
BIG = 1 << 63


def _vring_state(request: Request, index: int, num: int):
    def attack(s: Session, _pattern: bytes) -> None:
        s.share_memory()
        s.wire.request(request, VRING_STATE.pack(index, num))
    return attack


def _table(*regions: Region, fds: int | None = None):
    """SET_MEM_TABLE of ``regions`` with one memfd per region (or ``fds`` of them)."""
    def attack(s: Session, _pattern: bytes) -> None:
        count = len(regions) if fds is None else fds
        s.wire.request(Request.SET_MEM_TABLE, s.guest.table(list(regions)), [s.guest.memfd] * count)
    return attack


def _region(gpa: int = 0x1_0000_0000, size: int = REGION_BYTES, offset: int = 0) -> Region:
    return Region(gpa, size, 0x7000_0000_0000, offset)  # the user address is ours to name: it is only a name


def vring_addr_unmapped(s: Session, _pattern: bytes) -> None:
    s.share_memory()
    s.set_num()
    s.set_base()
    s.set_addr((0x1000, 0x2000, 0x3000))  # user addresses in no region
    s.finish_ring()


def vring_addr_index(s: Session, _pattern: bytes) -> None:
    s.share_memory()
    s.set_addr(index=FAR_QUEUE)


def eventfd_index(request: Request):
    def attack(s: Session, _pattern: bytes) -> None:
        s.share_memory()
        fd = new_eventfd()
        s.fds["stray"] = fd
        s.wire.request(request, U64.pack(0xFF), [fd])  # the largest index the message can carry
    return attack


def kick_unknown_bits(s: Session, _pattern: bytes) -> None:
    s.share_memory()
    fd = new_eventfd()
    s.fds["stray"] = fd
    s.wire.request(Request.SET_VRING_KICK, U64.pack(1 << 40), [fd])


def kick_without_fd(s: Session, _pattern: bytes) -> None:
    s.share_memory()
    s.set_num()
    s.set_base()
    s.set_addr()
    s.wire.request(Request.SET_VRING_KICK, U64.pack(0))  # an fd is promised (no NOFD flag) and none comes


def kick_nofd_with_fd(s: Session, _pattern: bytes) -> None:
    s.share_memory()
    fd = new_eventfd()
    s.fds["stray"] = fd
    s.wire.request(Request.SET_VRING_CALL, U64.pack(VRING_NOFD_MASK), [fd])


def extra_fd(s: Session, _pattern: bytes) -> None:
    s.share_memory()
    fd = new_eventfd()
    s.fds["stray"] = fd
    s.wire.request(Request.SET_VRING_NUM, VRING_STATE.pack(0, 16), [fd])


def blocking_eventfds(s: Session, _pattern: bytes) -> None:
    s.share_memory()
    s.start_ring(call=new_eventfd(blocking=True), err=new_eventfd(blocking=True), kick=new_eventfd(blocking=True))


def pipe_kick(s: Session, _pattern: bytes) -> None:
    s.share_memory()
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    s.fds["pipe"] = write_end
    s.start_ring(kick=read_end, kick_write=write_end)


def addr_before_mem(s: Session, _pattern: bytes) -> None:
    s.set_num()
    s.set_base()
    s.set_addr()
    s.share_memory()
    s.finish_ring()


def get_base_unstarted(s: Session, _pattern: bytes) -> None:
    s.wire.request(Request.GET_VRING_BASE, VRING_STATE.pack(0, 0))


def kick_before_mem(s: Session, _pattern: bytes) -> None:
    s.set_num()
    s.set_base()
    s.set_addr()
    s.set_eventfd(Request.SET_VRING_CALL, "call")
    s.set_eventfd(Request.SET_VRING_ERR, "err")
    kick = new_eventfd()
    os.eventfd_write(kick, 1)  # already kicked when it arrives
    s.set_eventfd(Request.SET_VRING_KICK, "kick", kick)
    s.enable()


def features_unoffered(s: Session, _pattern: bytes) -> None:
    s.wire.request(Request.SET_FEATURES, U64.pack(s.wire.offered | 1 << 50 | Feature.VERSION_1))


def unknown_request(s: Session, _pattern: bytes) -> None:
    s.wire.send(250, b"", flags=VERSION | FLAG_NEED_REPLY)
    s.wire.reply(250)


def short_payload(s: Session, _pattern: bytes) -> None:
    s.wire.request(Request.SET_VRING_NUM, b"\0\0\0\0")


def oversized_payload(s: Session, _pattern: bytes) -> None:
    s.wire.send_header(Request.SET_VRING_NUM, 1 << 20, bytes(1 << 20))


def bad_version(s: Session, _pattern: bytes) -> None:
    s.wire.send(Request.SET_OWNER, b"", flags=0x2 | FLAG_NEED_REPLY)
    s.wire.reply(Request.SET_OWNER)


def _inflight_bytes(s: Session) -> int:
    """The bytes of an inflight buffer for the session's one ring."""
    return inflight_region_size(QUEUE_SIZE, bool(s.features & Feature.RING_PACKED))


def _get_inflight(num_queues: int, queue_size: int):
    def attack(s: Session, _pattern: bytes) -> None:
        s.wire.request(Request.GET_INFLIGHT_FD, INFLIGHT.pack(0, 0, num_queues, queue_size))
    return attack


def _set_inflight(size: int | None = None, offset: int = 0, fd_bytes: int | None = None, kind: str = "memfd"):
    """SET_INFLIGHT_FD of a buffer for queue 0 (``size`` bytes at ``offset``: by default just the one region)
    in a fresh, zeroed fd of ``fd_bytes`` (by default the buffer's end); ``kind`` "pipe" sends a pipe instead,
    "unsealable" a memfd that cannot be sealed against shrinking, "none" no fd at all."""
    def attack(s: Session, _pattern: bytes) -> None:
        length = _inflight_bytes(s) if size is None else size
        payload = INFLIGHT.pack(length, offset, 1, QUEUE_SIZE)
        if kind == "none":
            s.wire.request(Request.SET_INFLIGHT_FD, payload)
            return
        if kind == "pipe":
            fd, s.fds["pipe"] = os.pipe2(os.O_CLOEXEC)
        else:
            fd = os.memfd_create("conform-inflight", os.MFD_CLOEXEC | (0 if kind == "unsealable"
                                                                        else os.MFD_ALLOW_SEALING))
            os.ftruncate(fd, min(offset + length, 1 << 30) if fd_bytes is None else fd_bytes)
            if kind == "sealed":
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        s.fds["inflight"] = fd
        s.share_memory()
        s.wire.request(Request.SET_INFLIGHT_FD, payload, [fd])
    return attack


def _status(value: int):
    def attack(s: Session, _pattern: bytes) -> None:
        s.wire.request(Request.SET_STATUS, U64.pack(value))
    return attack


def _case(name: str, summary: str, attack, **options) -> Case:
    return Case(f"msg.{name}", summary, "message", attack, **options)


MESSAGE_CASES = [
    _case("vring-num-index", "SET_VRING_NUM for queue 0xffff", _vring_state(Request.SET_VRING_NUM, FAR_QUEUE, 16)),
    _case("vring-num-zero", "SET_VRING_NUM of 0", _vring_state(Request.SET_VRING_NUM, 0, 0)),
    _case("vring-num-odd", "SET_VRING_NUM of 24 (a split ring needs a power of two)",
          _vring_state(Request.SET_VRING_NUM, 0, 24)),
    _case("vring-num-huge", "SET_VRING_NUM of 65536 (over 32768)", _vring_state(Request.SET_VRING_NUM, 0, 1 << 16)),
    _case("vring-base-index", "SET_VRING_BASE for queue 0xffff", _vring_state(Request.SET_VRING_BASE, FAR_QUEUE, 0)),
    _case("vring-base-huge", "SET_VRING_BASE of 0x10005 on a split ring (over 16 bits)",
          _vring_state(Request.SET_VRING_BASE, 0, 0x10005)),
    _case("vring-enable-index", "SET_VRING_ENABLE for queue 0xffff",
          _vring_state(Request.SET_VRING_ENABLE, FAR_QUEUE, 1)),
    _case("vring-enable-state", "SET_VRING_ENABLE with state 2", _vring_state(Request.SET_VRING_ENABLE, 0, 2)),
    _case("vring-addr-index", "SET_VRING_ADDR for queue 0xffff", vring_addr_index),
    _case("vring-addr-unmapped", "SET_VRING_ADDR naming user addresses in no region, then a kick",
          vring_addr_unmapped),
    _case("vring-kick-index", "SET_VRING_KICK for queue 255", eventfd_index(Request.SET_VRING_KICK)),
    _case("vring-call-index", "SET_VRING_CALL for queue 255", eventfd_index(Request.SET_VRING_CALL)),
    _case("vring-kick-unknown-bits", "SET_VRING_KICK with bit 40 set", kick_unknown_bits),
    _case("mem-size-2^63", "SET_MEM_TABLE with a region of 2^63 bytes", _table(_region(size=BIG))),
    _case("mem-offset-2^63", "SET_MEM_TABLE with an mmap offset of 2^63", _table(_region(offset=BIG))),
    _case("mem-gpa-wraps", "SET_MEM_TABLE with a region whose guest-physical end wraps past 2^64",
          _table(_region(gpa=(1 << 64) - 4096))),
    _case("mem-past-fd", "SET_MEM_TABLE with a region of 64 MiB from a 2 MiB memfd", _table(_region(size=64 << 20))),
    _case("mem-no-regions", "SET_MEM_TABLE of 0 regions", _table(fds=0)),
    _case("mem-9-regions", "SET_MEM_TABLE of 9 regions (the limit is 8)",
          _table(*(_region(gpa=0x1_0000_0000 + i * REGION_BYTES, size=4096) for i in range(9)))),
    _case("mem-overlap", "SET_MEM_TABLE of two regions at the same user address",
          _table(_region(), _region(gpa=0x2_0000_0000))),
    _case("fds-missing-mem", "SET_MEM_TABLE of two regions with one fd",
          _table(_region(), Region(0x2_0000_0000, 4096, 0x7100_0000_0000, 0), fds=1)),
    _case("fds-extra-mem", "SET_MEM_TABLE of one region with three fds", _table(_region(), fds=3)),
    _case("fds-missing-kick", "SET_VRING_KICK without an fd or the no-fd flag", kick_without_fd),
    _case("fds-nofd-with-fd", "SET_VRING_CALL with the no-fd flag and an fd", kick_nofd_with_fd),
    _case("fds-extra", "SET_VRING_NUM carrying an eventfd", extra_fd),
    _case("eventfd-blocking", "kick, call and err eventfds in blocking mode (well-formed)", blocking_eventfds),
    _case("kick-pipe", "a pipe as the kick fd", pipe_kick),
    _case("order-addr-before-mem", "SET_VRING_ADDR before SET_MEM_TABLE", addr_before_mem),
    _case("order-get-base-unstarted", "GET_VRING_BASE on a ring never started", get_base_unstarted),
    _case("order-kick-before-mem", "a ring kicked before SET_MEM_TABLE", kick_before_mem),
    _case("features-unoffered", "SET_FEATURES with bit 50, never offered", features_unoffered),
    _case("unknown-request", "request 250", unknown_request),
    _case("payload-short", "SET_VRING_NUM with a 4-byte payload", short_payload),
    _case("payload-oversized", "a header announcing a 1 MiB payload, and the payload", oversized_payload),
    _case("header-bad-version", "SET_OWNER with version 2 in its flags", bad_version),
    _case("inflight-get-queues-0", "GET_INFLIGHT_FD for 0 queues", _get_inflight(0, QUEUE_SIZE)),
    _case("inflight-get-queues-max", "GET_INFLIGHT_FD for 65535 queues", _get_inflight(0xFFFF, QUEUE_SIZE)),
    _case("inflight-get-size-odd", "GET_INFLIGHT_FD for queues of 100 (not a power of two)",
          _get_inflight(1, 100)),
    _case("inflight-get-size-huge", "GET_INFLIGHT_FD for queues of 65535 (over 32768)", _get_inflight(1, 0xFFFF)),
    _case("inflight-set", "SET_INFLIGHT_FD of a zeroed buffer sealed against shrinking (well-formed)",
          _set_inflight(kind="sealed")),
    _case("inflight-set-size-0", "SET_INFLIGHT_FD with mmap_size 0", _set_inflight(size=0, fd_bytes=4096)),
    _case("inflight-set-size-2^63", "SET_INFLIGHT_FD with mmap_size 2^63", _set_inflight(size=BIG, fd_bytes=4096)),
    _case("inflight-set-offset-2^63", "SET_INFLIGHT_FD with mmap_offset 2^63",
          _set_inflight(offset=BIG, fd_bytes=4096)),
    _case("inflight-set-offset-odd", "SET_INFLIGHT_FD with mmap_offset 16 (not page-aligned)",
          _set_inflight(offset=16, fd_bytes=8192)),
    _case("inflight-set-past-fd", "SET_INFLIGHT_FD of 1 MiB from a 4 KiB memfd",
          _set_inflight(size=1 << 20, fd_bytes=4096)),
    _case("inflight-set-too-small", "SET_INFLIGHT_FD of 64 bytes, less than one region", _set_inflight(size=64)),
    _case("inflight-set-pipe", "SET_INFLIGHT_FD with a pipe as the fd", _set_inflight(kind="pipe")),
    _case("inflight-set-unsealable", "SET_INFLIGHT_FD with a memfd that cannot be sealed against shrinking",
          _set_inflight(kind="unsealable")),
    _case("inflight-set-no-fd", "SET_INFLIGHT_FD without an fd", _set_inflight(kind="none")),
    _case("status-zero", "SET_STATUS 0 before the rings start (well-formed: QEMU sends it when stopping)",
          _status(0)),
    _case("status-huge", "SET_STATUS 0x100 (the status is one byte)", _status(0x100)),
    _case("status-2^63", "SET_STATUS 2^63", _status(BIG)),
]
