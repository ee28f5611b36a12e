"""Batch: preallocated numpy arrays that carry many chains across the Python/C boundary in one call."""

from __future__ import annotations

import numpy as np


def batch_arrays(capacity: int, max_segments: int | None) -> tuple[int, int, tuple[np.ndarray, ...]]:
    """(capacity, max_segments, the arrays) of a Batch, in the order of Batch's attributes (both twins)."""
    if capacity < 1:
        raise ValueError("a batch holds at least one chain")
    max_segments = 4 * capacity if max_segments is None else max_segments
    if max_segments < 1:
        raise ValueError("a batch holds at least one segment")
    per_chain = [np.zeros(capacity, t) for t in (np.uint16, np.uint32, np.uint32)]  # heads, lens, nsegs
    totals = [np.zeros(capacity, np.uint32) for _ in range(2)]  # readable_len, writable_len
    segments = [np.zeros(max_segments, t) for t in (np.uint64, np.uint32, np.uint8)]  # addr, len, writable
    return capacity, max_segments, (*per_chain, np.zeros(capacity + 1, np.uint32), *totals, *segments)


class Batch:
    """Arrays for up to ``capacity`` chains and ``max_segments`` buffer segments, reused from call to call.

    Device side: ``DeviceQueue.pop_batch`` fills ``heads``, ``nsegs``, ``seg_start``, the ``seg_*`` arrays and the
    ``readable_len`` / ``writable_len`` totals; the device sets ``lens`` (bytes written) and calls ``push_batch``.
    Driver side: fill ``nsegs`` and the ``seg_*`` arrays (chain k takes the next ``nsegs[k]`` segments), call
    ``DriverQueue.add_batch``, which fills ``heads``; ``reap_batch`` fills ``heads`` and ``lens``.
    ``count`` is how many chains the last call filled.
    """

    def __init__(self, capacity: int, max_segments: int | None = None) -> None:
        self.capacity, self.max_segments, arrays = batch_arrays(capacity, max_segments)
        self.count = 0
        (self.heads, self.lens, self.nsegs, self.seg_start, self.readable_len, self.writable_len, self.seg_addr,
         self.seg_len, self.seg_writable) = arrays

    def set_chains(self, segments: list[tuple[int, int, bool]], count: int) -> None:
        """Driver side: ``count`` chains, each made of the same ``segments`` (address, length, device-writable)."""
        per = len(segments)
        if count > self.capacity or count * per > self.max_segments:
            raise ValueError(f"{count} chains of {per} segments do not fit the batch")
        for k, (addr, length, writable) in enumerate(segments):
            self.seg_addr[k: count * per: per] = addr
            self.seg_len[k: count * per: per] = length
            self.seg_writable[k: count * per: per] = bool(writable)
        self.nsegs[:count] = per

    def segments(self, k: int) -> list[tuple[int, int, bool]]:
        """(address, length, device-writable) of chain ``k`` as the last ``pop_batch`` filled it."""
        if not 0 <= k < self.count:
            raise IndexError(f"chain {k} is not in the batch ({self.count} chains)")
        start, end = int(self.seg_start[k]), int(self.seg_start[k + 1])
        return [(int(self.seg_addr[i]), int(self.seg_len[i]), bool(self.seg_writable[i])) for i in range(start, end)]
