"""What both twins' Batch share: the preallocated numpy arrays and the Python-level helpers over them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import caller_error, check_fits


def batch_arrays(capacity: int, max_segments: int | None) -> tuple[int, int, tuple[np.ndarray, ...]]:
    """(capacity, max_segments, the arrays) of a Batch, in the order of Batch's attributes (both twins)."""
    if capacity < 1:
        raise caller_error("batch-capacity")
    max_segments = 4 * capacity if max_segments is None else max_segments
    if max_segments < 1:
        raise caller_error("batch-segments")
    per_chain = [np.zeros(capacity, t) for t in (np.uint16, np.uint32, np.uint32)]  # heads, lens, nsegs
    totals = [np.zeros(capacity, np.uint32) for _ in range(2)]  # readable_len, writable_len
    segments = [np.zeros(max_segments, t) for t in (np.uint64, np.uint32, np.uint8)]  # addr, len, writable
    return capacity, max_segments, (*per_chain, np.zeros(capacity + 1, np.uint32), *totals, *segments)


class BatchMethods:
    """The methods of Batch that are plain Python over its arrays (the C twin's Batch takes them as they are)."""

    capacity: int
    max_segments: int
    count: int
    nsegs: Any
    seg_start: Any
    seg_addr: Any
    seg_len: Any
    seg_writable: Any

    def set_chains(self, segments: list[tuple[int, int, bool]], count: int) -> None:
        """Driver side: ``count`` chains, each made of the same ``segments`` (address, length, device-writable)."""
        per = len(segments)
        if count > self.capacity or count * per > self.max_segments:
            raise caller_error("batch-set-chains", count=count, per=per)
        check_fits("addresses", [int(addr) for addr, _, _ in segments], "uint64")  # what the arrays hold
        check_fits("lengths", [int(length) for _, length, _ in segments], "uint32")
        for k, (addr, length, writable) in enumerate(segments):
            self.seg_addr[k: count * per: per] = addr
            self.seg_len[k: count * per: per] = length
            self.seg_writable[k: count * per: per] = bool(writable)
        self.nsegs[:count] = per

    def segments(self, k: int) -> list[tuple[int, int, bool]]:
        """(address, length, device-writable) of chain ``k`` as the last ``pop_batch`` filled it."""
        if not 0 <= k < self.count:
            raise caller_error("batch-index", chain=k, count=self.count)
        start, end = int(self.seg_start[k]), int(self.seg_start[k + 1])
        return [(int(self.seg_addr[i]), int(self.seg_len[i]), bool(self.seg_writable[i])) for i in range(start, end)]
