"""Regions change while batches run in another thread: the Cython twin's big batches release the GIL and walk the
region table meanwhile, so a change must not free the table (or the memory) under them."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from vring.testing import BASE, DATA, MEM_SIZE, make_pair

SIZE = 1024
CHAINS = 512  # two descriptors each; far past the engine's threshold for releasing the GIL: long GIL-free loops
UNRELATED = BASE + MEM_SIZE + 0x10000  # a guest-physical range no chain uses


def churn_regions(mem, stop: threading.Event, changes: list[int]) -> None:
    """Add and remove a region not far from the ring's, over and over, each time with fresh memory."""
    while not stop.is_set():
        mem.add_region(UNRELATED, bytearray(4096))
        mem.add_region(UNRELATED + 0x2000, np.zeros(512, np.uint64))
        mem.remove_region(UNRELATED)
        mem.remove_region(UNRELATED + 0x2000)
        changes[0] += 4


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_batches_run_safely_while_another_thread_changes_regions(twin, packed):
    p = make_pair(twin, SIZE, packed=packed)
    shape = twin.Batch(CHAINS, 2 * CHAINS)
    chain = [(DATA, 16, False), (DATA + 0x1000, 64, True)]
    shape.set_chains(chain, CHAINS)
    expected = [chain] * CHAINS
    popped, reaped = twin.Batch(CHAINS, 2 * CHAINS), twin.Batch(CHAINS)
    stop, changes = threading.Event(), [0]
    churner = threading.Thread(target=churn_regions, args=(p.mem, stop, changes))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often, so that changes land while the batches run
    churner.start()
    rounds = 0
    try:
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline or changes[0] < 100:
            assert p.drv.add_batch(shape, CHAINS) == CHAINS
            p.drv.kick_needed()
            assert p.dev.pop_batch(popped) == CHAINS
            assert [popped.segments(k) for k in range(CHAINS)] == expected
            popped.lens[:CHAINS] = np.arange(CHAINS) % 64
            p.dev.push_batch(popped)
            assert p.drv.reap_batch(reaped) == CHAINS
            assert reaped.heads[:CHAINS].tolist() == shape.heads[:CHAINS].tolist()
            assert reaped.lens[:CHAINS].tolist() == [k % 64 for k in range(CHAINS)]
            rounds += 1
    finally:
        stop.set()
        churner.join()
        sys.setswitchinterval(interval)
    assert rounds and changes[0] >= 100
    assert p.mem.regions == [(BASE, MEM_SIZE)]
