"""Fuzz the driver side (split and packed rings): the driver adds chains with tokens, the fuzzed bytes play a
hostile device writing the used ring or used descriptors. The first byte picks the layout; input format and
invariants: ``driver_program.py``. Run: ``python fuzz/fuzz_driver.py -max_total_time=60 CORPUS_DIR``."""

import harness
from harness import driver_program


def test_one_input(data: bytes) -> None:
    if not data:
        return
    for twin in harness.twins():
        driver_program.run(twin, data[1:], packed=bool(data[0] & 1))


if __name__ == "__main__":
    harness.fuzz(test_one_input)
