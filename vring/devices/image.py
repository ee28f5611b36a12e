"""A disk image opened once for a server's whole life: checked, locked, and shared by every connection.

The lock is an open-file-description lock (``F_OFD_SETLK``) over the whole file, as qemu-storage-daemon takes
one: shared for a read-only image, exclusive for a writable one, so two writers (or a writer and readers) never
serve the same image, while read-only servers may. OFD locks belong to the open file, not the process: a second
open of the image in this process conflicts too, which is why the server opens it once and its devices share it
(``os.preadv``/``os.pwritev`` at explicit offsets need no lock between threads).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

SECTOR = 512

# struct flock (Linux, 64-bit off_t): short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = struct.Struct("@hhqqi4x")
_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


class ImageError(Exception):
    """An image that cannot be served; the message is one line naming the file and what to do."""


class Image:
    """``path`` opened read-only or read-write, locked, of ``size`` bytes (a whole number of sectors)."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.fd = _open(path, read_only)
        try:
            st = os.fstat(self.fd)
            self.is_block_device = stat.S_ISBLK(st.st_mode)
            if not (self.is_block_device or stat.S_ISREG(st.st_mode)):
                raise ImageError(f"{path} is not a regular file or a block device")
            if not read_only and not st.st_mode & _WRITE_BITS:
                # root may write it anyway; the mode says nobody should
                raise ImageError(f"{path} is read-only (mode {stat.S_IMODE(st.st_mode):04o}): serve it with "
                                 f"--read-only")
            self.size = os.lseek(self.fd, 0, os.SEEK_END) if self.is_block_device else st.st_size
            if self.size == 0:
                raise ImageError(f"{path} is empty")
            if self.size % SECTOR:
                raise ImageError(f"{path} is {self.size} bytes, not a multiple of {SECTOR}: its last "
                                 f"{self.size % SECTOR} bytes would be invisible to the guest")
            _lock(self.fd, path, read_only)
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def capacity(self) -> int:
        """Size in 512-byte sectors."""
        return self.size // SECTOR

    def close(self) -> None:
        """Close the image, which drops its lock."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open(path: str, read_only: bool) -> int:
    try:
        return os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a directory, not an image") from None
    except PermissionError:
        hint = "" if read_only else ": serve it with --read-only, or make it writable"
        raise ImageError(f"{path}: permission denied{hint}") from None
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror}") from None


def _lock(fd: int, path: str, read_only: bool) -> None:
    """An OFD lock over the whole file: shared when ``read_only``, else exclusive; ImageError if it is held."""
    request = _FLOCK.pack(fcntl.F_RDLCK if read_only else fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise ImageError(f"{path} is in use by another process (locked)") from None
        raise ImageError(f"{path}: cannot lock it: {exc.strerror}") from None
