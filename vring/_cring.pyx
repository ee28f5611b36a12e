# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Split and packed virtqueues over raw pointers: the Cython twin of ``vring._pyring``.

Pointers to guest memory come once from the buffer protocol; ring pointers are translated again only when guest
memory changes. The hot functions are ``noexcept nogil`` C; every bound is checked by hand against the queue size
or a region's size, and shared memory is read through ``barrier.h``. Errors are found in C and worded in Python by
``vring._errors`` so that both twins say exactly the same thing.

This module only gathers the parts, one concern per file under ``_cring/``, in the order they build on each other:
constants, guest memory, chains and batches, the ring layouts' fields, what both layouts share, the inflight record,
the C functions of each side and layout, the dispatch between layouts, the debug checks on entry and exit, the queue
classes, the C floor, the virtio-blk worker loop that serves queues with io_uring, and the virtio-blk client's
request loop.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memset, memcpy
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef extern from "Python.h":
    ctypedef struct PyThreadState
    PyThreadState *PyEval_SaveThread()
    void PyEval_RestoreThread(PyThreadState *)
cimport numpy as cnp

import numpy as np

from . import _features
from ._batch import BatchMethods, batch_arrays
from ._buffers import as_byte_view, map_fd
from ._chainio import gather, write_chain
from ._errors import (C_INT_RANGES, AddressError, broken_error, caller_error, chain_error, check_fits,
                      host_alignment_error, used_error)
from ._features import DEFAULT_MAX_INDIRECT, Feature
from ._inflight import (PACKED_ENTRIES, PACKED_ENTRY, SPLIT_ENTRIES, SPLIT_ENTRY, init_packed, init_split,
                        record_version, recover_packed, recover_split, region_view)
from ._layout import PackedLayout, SplitLayout
from ._state import QueueState

cnp.import_array()

include "_cring/defs.pxi"
include "_cring/memory.pxi"
include "_cring/chain.pxi"
include "_cring/batch.pxi"
include "_cring/split_ring.pxi"
include "_cring/packed_ring.pxi"
include "_cring/descriptors.pxi"
include "_cring/inflight.pxi"
include "_cring/driver_checks.pxi"
include "_cring/split_device.pxi"
include "_cring/packed_device.pxi"
include "_cring/split_driver.pxi"
include "_cring/packed_driver.pxi"
include "_cring/dispatch.pxi"
include "_cring/debug.pxi"
include "_cring/device.pxi"
include "_cring/driver.pxi"
include "_cring/packed_queues.pxi"
include "_cring/floor.pxi"
include "_cring/posix.pxi"
include "_cring/blk_wire.pxi"
include "_cring/blk_io.pxi"
include "_cring/blk_request.pxi"
include "_cring/blk_worker.pxi"
include "_cring/blk_client.pxi"
