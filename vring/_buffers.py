"""Host buffers for guest memory, shared by both twins' GuestMemory: flat byte views and fd mappings."""

from __future__ import annotations

import mmap
from typing import Any

from ._errors import caller_error


def as_byte_view(buffer: Any) -> memoryview:
    """A writable, flat byte view of any object with the buffer protocol (refuses read-only or strided ones)."""
    view = memoryview(buffer)
    if view.readonly:
        raise caller_error("memory-readonly")
    if not view.c_contiguous:
        raise caller_error("memory-strided")
    return view.cast("B") if (view.format != "B" or view.ndim != 1) else view


def map_fd(fd: int, size: int, offset: int) -> tuple[mmap.mmap, memoryview]:
    """Map ``size`` bytes of ``fd`` from ``offset``, shared and writable: (the mapping, a view of those bytes)."""
    delta = offset % mmap.ALLOCATIONGRANULARITY  # mmap wants a page-aligned offset: map from the page start
    mapping = mmap.mmap(fd, size + delta, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset - delta)
    return mapping, memoryview(mapping)[delta:delta + size]
