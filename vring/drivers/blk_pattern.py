"""The per-sector pattern that benchmark reads are checked against and benchmark writes write.

Each 512-byte sector is 64 little-endian 64-bit words: its sector number, the seed, then
``(sector * 0x9E3779B97F4A7C15 + i) ^ seed`` for word ``i`` from 2 to 63. So any sector read from anywhere says
which sector it is, a sector from another place or another run (seed) is told apart, and every byte is checked.
The same formula is in the C core (``vring/_cring/blk_client.pxi``) and in the C floor client (``bench/c``).
"""

from __future__ import annotations

import os

import numpy as np

SECTOR = 512
WORDS = SECTOR // 8
MIX = np.uint64(0x9E3779B97F4A7C15)


def pattern(seed: int, sector: int, count: int) -> bytes:
    """The pattern of ``count`` sectors from ``sector``."""
    sectors = np.arange(sector, sector + count, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):  # the mix wraps modulo 2**64 on purpose
        words = (sectors * MIX + np.arange(WORDS, dtype=np.uint64)) ^ np.uint64(seed)
    words[:, 0] = sectors[:, 0]
    words[:, 1] = seed
    return words.astype("<u8").tobytes()


def fill_image(path: str | os.PathLike[str], seed: int, sectors: int | None = None) -> int:
    """Write the pattern over the whole file at ``path`` (or its first ``sectors``); returns the sectors written."""
    if sectors is None:
        sectors = os.path.getsize(path) // SECTOR
    step = 2048  # 1 MiB at a time
    with open(path, "r+b") as f:
        for first in range(0, sectors, step):
            f.write(pattern(seed, first, min(step, sectors - first)))
    return sectors


def first_difference(data: bytes, seed: int, sector: int) -> tuple[int, int] | None:
    """(sector, byte offset in it) of the first byte of ``data`` that is not the pattern from ``sector``, or None."""
    want = pattern(seed, sector, len(data) // SECTOR)
    if data == want:
        return None
    offset = next(i for i, (a, b) in enumerate(zip(data, want)) if a != b)
    return sector + offset // SECTOR, offset % SECTOR
