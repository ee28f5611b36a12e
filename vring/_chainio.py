"""Copying between bytes and a chain's list of memoryviews (shared by both twins' Chain and by the devices)."""

from __future__ import annotations

from typing import Any, Sequence


def gather(views: Sequence[memoryview]) -> bytes:
    """The views' bytes, concatenated (a copy)."""
    return b"".join(bytes(v) for v in views)


def scatter(views: Sequence[memoryview], data: Any, offset: int = 0) -> int:
    """Copy ``data`` into the views from byte ``offset`` of their concatenation; returns the bytes copied (less
    than ``len(data)`` only if the views end first)."""
    src = memoryview(data).cast("B")
    done = 0
    for view in views:
        if done >= src.nbytes:
            break
        if offset >= view.nbytes:
            offset -= view.nbytes
            continue
        n = min(view.nbytes - offset, src.nbytes - done)
        view[offset:offset + n] = src[done:done + n]
        done += n
        offset = 0
    return done


def write_chain(chain: Any, data: Any, offset: int) -> int:
    """Chain.write of both twins: refuse what does not fit the writable part, then scatter it."""
    nbytes = memoryview(data).nbytes
    if offset < 0 or offset + nbytes > chain.writable_len:
        raise ValueError(f"{nbytes} bytes at offset {offset} do not fit the chain's {chain.writable_len} "
                         "writable bytes")
    return scatter(chain.writable, data, offset)
