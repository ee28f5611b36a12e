"""Batch: preallocated numpy arrays that carry many chains across the Python/C boundary in one call."""

from __future__ import annotations

from .._batch import BatchMethods, batch_arrays


class Batch(BatchMethods):
    """Arrays for up to ``capacity`` chains and ``max_segments`` buffer segments, reused from call to call.

    Device side (split or packed ring): ``pop_batch`` fills ``heads``, ``nsegs``, ``seg_start``, the ``seg_*``
    arrays and the ``readable_len`` / ``writable_len`` totals; the device sets ``lens`` (bytes written) and calls
    ``push_batch``. Driver side: fill ``nsegs`` and the ``seg_*`` arrays (chain k takes the next ``nsegs[k]``
    segments), call ``add_batch``, which fills ``heads``; ``reap_batch`` fills ``heads`` and ``lens``.
    ``count`` is how many chains the last call filled.
    """

    def __init__(self, capacity: int, max_segments: int | None = None) -> None:
        self.capacity, self.max_segments, arrays = batch_arrays(capacity, max_segments)
        self.count = 0
        (self.heads, self.lens, self.nsegs, self.seg_start, self.readable_len, self.writable_len, self.seg_addr,
         self.seg_len, self.seg_writable) = arrays
