"""The device's checks of a chain's descriptors that split and packed rings share, written once (pure-Python twin):
each buffer, checked and then translated into pieces of guest memory, and each indirect table.

Both device queues walk their ring their own way and call these in the same order, so that both layouts, like both
twins, refuse the same input with the same MalformedChain; the caller latches its queue broken. ``head`` is what
the errors name the chain by: its head index (split) or the ring slot it starts at (packed); ``index`` is the
descriptor's slot in the table being walked (the indirect table when ``in_indirect``). Plain functions over the
walk's locals: the walk is the device's hottest loop, and an object per chain would cost more than the checks.
"""

from __future__ import annotations

from .._errors import AddressError, chain_error
from .._features import DESC_F_NEXT, DESC_SIZE
from .chain import Piece
from .memory import GuestMemory
from .rings import LEN_MAX


def add_buffer(mem: GuestMemory, pieces: list[Piece], head: int, index: int, in_indirect: bool, addr: int,
               length: int, writable: bool, readable_len: int, writable_len: int) -> tuple[int, int]:
    """Check one buffer of a chain and append its pieces (one per region it crosses) to ``pieces``; returns the
    chain's (readable_len, writable_len) with it. A device-writable buffer has been seen once writable_len > 0."""
    if length == 0:
        raise chain_error("zero-length", head, index, in_indirect)
    if writable:
        writable_len += length
    elif writable_len:
        raise chain_error("readable-after-writable", head, index, in_indirect)
    else:
        readable_len += length
    if readable_len + writable_len > LEN_MAX:
        raise chain_error("chain-too-large", head, index, in_indirect)
    try:
        for region, offset, piece in mem.pieces(addr, length):
            pieces.append((region.gpa + offset, piece, writable, (region.gpa, region.view)))
    except AddressError:
        raise chain_error("buffer-outside-memory", head, index, in_indirect, addr, length) from None
    return readable_len, writable_len


def indirect_table(mem: GuestMemory, head: int, index: int, in_indirect: bool, addr: int, length: int, flags: int,
                   negotiated: bool, max_indirect: int) -> memoryview:
    """The indirect table a descriptor refers to, after every check the spec asks of it (2.7.5.3, 2.8.7);
    ``negotiated`` is whether VIRTIO_F_INDIRECT_DESC was."""
    if not negotiated:
        raise chain_error("indirect-not-negotiated", head, index, in_indirect)
    if in_indirect:
        raise chain_error("nested-indirect", head, index, in_indirect)
    if flags & DESC_F_NEXT:
        raise chain_error("indirect-with-next", head, index, in_indirect)
    if length == 0:
        raise chain_error("indirect-len-zero", head, index, in_indirect)
    if length % DESC_SIZE:
        raise chain_error("indirect-len-unaligned", head, index, in_indirect, length)
    if length // DESC_SIZE > max_indirect:
        raise chain_error("indirect-too-large", head, index, in_indirect, length, max_indirect)
    try:
        return mem.view(addr, length)
    except AddressError:
        raise chain_error("indirect-outside-memory", head, index, in_indirect, addr, length) from None
