"""Fuzz the twins against each other: the same input through ``vring._cring`` and ``vring._pyring`` must give the
same results, the same errors (class and message) and the same bytes of guest memory.

The first byte picks the program: a device on a split or packed ring (``device_program.py``) or a driver on a
split or packed ring (``driver_program.py``, with out-of-range ``add`` arguments allowed, so that both twins'
caller errors are compared). Run: ``python fuzz/fuzz_twins.py -max_total_time=60 CORPUS_DIR``."""

from typing import Any

import harness
from harness import CYTHON, PYTHON, device_program, driver_program
from guest import HarnessFailure


def run(twin: Any, kind: int, data: bytes) -> tuple[list[Any], bytes]:
    if kind < 2:
        return device_program.run(twin, data, packed=bool(kind & 1))
    return driver_program.run(twin, data, packed=bool(kind & 1), raw_args=True)


def where_traces_differ(a: list[Any], b: list[Any]) -> str:
    k = harness.first_difference(a, b)
    if k < min(len(a), len(b)):
        return f"entry {k}: cython {a[k]!r} != python {b[k]!r}"
    return f"lengths: cython {len(a)} entries, python {len(b)}"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind = data[0] % 4
    c_trace, c_bytes = run(CYTHON, kind, data[1:])
    py_trace, py_bytes = run(PYTHON, kind, data[1:])
    if c_trace != py_trace:
        raise HarnessFailure(f"the twins' traces differ at {where_traces_differ(c_trace, py_trace)}")
    if c_bytes != py_bytes:
        at = harness.first_difference(c_bytes, py_bytes)
        raise HarnessFailure(f"the twins leave different guest memory (first difference at region byte {at})")


if __name__ == "__main__":
    harness.fuzz(test_one_input)
