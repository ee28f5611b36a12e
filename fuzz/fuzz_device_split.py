"""Fuzz the device side of a split ring: a hostile driver's descriptor table, avail ring, indices, event fields
and indirect tables, and a program of pops (per call and batch), pushes and notification checks. Input format and
invariants: ``device_program.py``. Run: ``python fuzz/fuzz_device_split.py -max_total_time=60 CORPUS_DIR``."""

import harness
from harness import device_program


def test_one_input(data: bytes) -> None:
    for twin in harness.twins():
        device_program.run(twin, data, packed=False)


if __name__ == "__main__":
    harness.fuzz(test_one_input)
