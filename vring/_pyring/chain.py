"""Chain: one descriptor chain the device popped, split or packed ring alike (pure-Python twin)."""

from __future__ import annotations

from typing import Any

from .._chainio import gather, write_chain

# One piece of a buffer inside one region: (gpa, length, device-writable, (region gpa, region view)).
Piece = tuple[int, int, bool, tuple[int, memoryview]]


class Chain:
    """One descriptor chain the device popped: its head and its buffers, device-readable ones first.

    ``head`` is the chain's head index on a split ring and its buffer id on a packed ring. ``readable`` and
    ``writable`` are lists of zero-copy memoryviews into guest memory (a buffer that crosses two adjacent regions
    is two views); they are made on first use.
    """

    __slots__ = ("head", "readable_len", "writable_len", "indirect", "_pieces", "_readable", "_writable")

    head: int
    readable_len: int
    writable_len: int
    indirect: bool
    _pieces: list[Piece]
    _readable: list[memoryview] | None
    _writable: list[memoryview] | None

    def __init__(self) -> None:
        raise TypeError("chains come from DeviceQueue.pop()")

    @classmethod
    def _make(cls, head: int, pieces: list[Piece], readable_len: int, writable_len: int, indirect: bool) -> Chain:
        """The chain a device queue popped (the public constructor refuses, as the Cython twin's does)."""
        chain = cls.__new__(cls)
        chain.head = head
        chain.readable_len = readable_len
        chain.writable_len = writable_len
        chain.indirect = indirect
        chain._pieces = pieces
        chain._readable = None
        chain._writable = None
        return chain

    def _views(self, writable: bool) -> list[memoryview]:
        out = []
        for gpa, length, is_w, (region_gpa, region_view) in self._pieces:
            if is_w == writable:
                off = gpa - region_gpa
                out.append(region_view[off : off + length])
        return out

    @property
    def readable(self) -> list[memoryview]:
        if self._readable is None:
            self._readable = self._views(False)
        return self._readable

    @property
    def writable(self) -> list[memoryview]:
        if self._writable is None:
            self._writable = self._views(True)
        return self._writable

    @property
    def segments(self) -> list[tuple[int, int, bool]]:
        """(guest-physical address, length, device-writable) of every buffer piece, in chain order."""
        return [(gpa, length, w) for gpa, length, w, _ in self._pieces]

    def read(self) -> bytes:
        """All device-readable bytes of the chain, concatenated (a copy)."""
        return gather(self.readable)

    def write(self, data: Any, offset: int = 0) -> int:
        """Scatter ``data`` into the writable buffers from byte ``offset``; returns the bytes written."""
        return write_chain(self, data, offset)

    def __repr__(self) -> str:
        return (f"Chain(head={self.head}, readable_len={self.readable_len}, writable_len={self.writable_len}, "
                f"segments={len(self._pieces)})")
