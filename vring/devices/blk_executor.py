"""How a BlkDevice does its I/O: the aio mode (io_uring, a thread pool, or synchronous), the cache mode (the page
cache, or O_DIRECT), and the C executor a vhost-user worker runs for its queues (``vring._cring.BlkWorker``).

The C executor serves whole rings without the GIL; the per-chain ``BlkDevice.handle`` stays the pure-Python
engine's path (always synchronous) and the path of queues the C executor cannot take.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any, Sequence

from .image import SECTOR, ImageError

AIO_MODES = ("io_uring", "threads", "sync")
CACHE_MODES = ("writeback", "none")
AIO_DESCRIPTIONS = {"io_uring": "io_uring", "threads": "a thread pool", "sync": "synchronous I/O"}
# The longest the C executor, run dry, looks at its rings before sleeping (adapted below it): longer than a wake-up
# from poll() on an idle machine (tens of microseconds), so that a driver answering at once costs neither side one.
EXECUTOR_POLL_SECONDS = 200e-6


def c_engine() -> ModuleType | None:
    """The C core if this process runs it (not under VRING_PUREPYTHON=1)."""
    from .. import IMPLEMENTATION

    if IMPLEMENTATION != "cython":
        return None
    import vring._cring as engine

    return engine


@functools.cache
def _uring_unavailable() -> str | None:
    engine = c_engine()
    return "the pure-Python engine has no io_uring" if engine is None else engine.blk_uring_unavailable()


def choose_aio(requested: str | None) -> tuple[str, str | None]:
    """The aio mode to use for ``requested`` (None: the best available) and, when it is not the one asked for
    (or io_uring for the default), why, in one line."""
    if requested is not None and requested not in AIO_MODES:
        raise ValueError(f"aio must be one of {', '.join(AIO_MODES)}, not {requested!r}")
    if c_engine() is None:
        if requested in (None, "sync"):
            return "sync", None
        return "sync", f"--aio {requested} needs the C core: the pure-Python engine does synchronous I/O"
    if requested in (None, "io_uring"):
        why = _uring_unavailable()
        if why is None:
            return "io_uring", None
        return "threads", f"io_uring is unavailable ({why}): using a thread pool"
    return requested, None


def open_direct(fd: int, path: str, read_only: bool) -> int:
    """A second descriptor of the open image ``fd``, with O_DIRECT (the page cache bypassed); ImageError if the
    file system refuses it. It is not locked: the image's own descriptor holds the lock."""
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_DIRECT | os.O_CLOEXEC
    try:
        return os.open(f"/proc/self/fd/{fd}", flags)
    except OSError as exc:
        raise ImageError(f"{path}: cannot open it with O_DIRECT (--cache none): {exc.strerror}") from None


def direct_alignment(logical_block_size: int) -> int:
    """What O_DIRECT buffers must be aligned to: the logical block size, at least a sector."""
    return max(SECTOR, logical_block_size)


def make_executor(device: Any, rings: Sequence[tuple[int, Any, int, int]], stop_fd: int) -> Any:
    """The C executor for ``rings`` (index, device queue, kick fd, call fd) of the BlkDevice ``device``, or None
    when the queues are not the C core's (the generic worker then calls ``device.handle``)."""
    engine = c_engine()
    if engine is None or not all(isinstance(queue, engine.DeviceQueue) for _, queue, _, _ in rings):
        return None
    direct = device.direct_fd >= 0
    indices = [index for index, _, _, _ in rings]
    kinds = engine.BLK_NOTICES

    def notice(kind: int, position: int, head: int, value: int) -> None:  # the executor's, as handle's
        if kind == kinds["no-status"]:
            device.tell_no_status(indices[position], head)
        elif kind == kinds["short-header"]:
            device.tell_short_header(indices[position], head, value)
        elif kind == kinds["io-error"]:
            device.tell_io_error(OSError(value, os.strerror(value)))

    return engine.BlkWorker([(queue, kick, call) for _, queue, kick, call in rings],
                            device.direct_fd if direct else device.fd, device.size, read_only=device.read_only,
                            writeback=bool(device.writeback),
                            align=direct_alignment(device.logical_block_size) if direct else 0,
                            serial=device.serial, aio=device.aio, stop_fd=stop_fd,
                            punch_holes=not device.is_block_device, notice=notice, zero_fd=device.fd,
                            poll_ns=int(EXECUTOR_POLL_SECONDS * 1e9))
