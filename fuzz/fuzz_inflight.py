"""Fuzz the inflight record (vhost-user's "Inflight I/O tracking") that a hostile front-end shares with the device:
a device keeps a record on a fuzzed ring (``device_program.py``), then dies; a new device takes the ring over from
the record after the fuzzed bytes scribbled on it, so that most records reaching ``attach_inflight`` are nearly
valid ones a real device wrote. Both twins run the same input and must agree byte for byte.

Input format: u8 ring kind (bit 0: packed), then ``device_program.py``'s input (ring header, ring area, tables,
4-byte operations), where an operation whose opcode byte is ``CRASH`` or above is a crash instead: its ``arg``
says how many scribbles follow (``arg % 8``, each u16 offset, u8 length 1..8, that many bytes) and its ``value``
how the new device is restored before it attaches the record (bit 0: at a fuzzed base, else as a restarted
back-end is: split at the used ring's idx, packed at the initial state). An opcode byte from ``SCRIBBLE`` up to
``CRASH`` is scribbles alone, on the record of a device that keeps running (which must not read them back).

Invariants, beyond device_program's: ``attach_inflight`` raises only InflightError, and then leaves the record,
the queue's state and its health as they were; chains given back from a record lie in guest memory like any other
(device_program checks every chain); no byte around the record's region changes; the twins give the same trace
(results, error classes and messages), guest memory and record. Run:
``python fuzz/fuzz_inflight.py -max_total_time=60 CORPUS_DIR``."""

from __future__ import annotations

import types
from typing import Any

import numpy as np

import harness
from harness import CYTHON, PYTHON, device_program
from guest import CANARY, CANARY_BYTES, HarnessFailure, check_vring_error, outcome, timed

from vring import InflightError, QueueBroken, QueueState, create_device_queue, inflight_region_size

CRASH = 0xF0  # an opcode byte at least this is a crash (device_program's opcodes are the byte modulo 13)
SCRIBBLE = 0xE0  # from this up to CRASH: the front-end scribbles on the record of a running device
MAX_SCRIBBLES = 8


class InflightProgram(device_program.DeviceProgram):
    """A device program whose device keeps an inflight record in a region between canary bytes, and dies."""

    def __init__(self, twin: types.ModuleType, data: bytes, packed: bool) -> None:
        super().__init__(twin, data, packed)
        size = self.layout.size
        self.region_bytes = inflight_region_size(size, packed)
        # 64 canary bytes either side; numpy's buffer is 16-byte aligned, so the region is 8-byte aligned.
        self.host = np.full(self.region_bytes + 2 * CANARY_BYTES, CANARY, np.uint8)
        self.region = self.host[CANARY_BYTES: CANARY_BYTES + self.region_bytes]
        self.region[:] = 0
        self.trace.append(("attach", self.attach()))

    def attach(self) -> Any:
        """``attach_inflight`` on the region: what it returned, or its error after checking it changed nothing."""
        q = self.queue
        before = (bytes(self.region), tuple(q.state) if not q.broken else None, q.broken)
        try:
            result = timed(q.attach_inflight, self.region)
        except InflightError as err:
            after = (bytes(self.region), tuple(q.state) if not q.broken else None, q.broken)
            if after != before:
                raise HarnessFailure(f"a refused record changed the record or the queue: {err}") from err
            return outcome(err)
        except Exception as err:
            check_vring_error(err)
            return outcome(err)
        finally:
            self.check_region()
        return result, q.inflight_pending, tuple(q.state)

    def check_region(self) -> None:
        for edge in (self.host[:CANARY_BYTES], self.host[CANARY_BYTES + self.region_bytes:]):
            if bytes(edge) != bytes([CANARY]) * CANARY_BYTES:
                raise HarnessFailure("a canary around the inflight region was overwritten")

    def crash(self, arg: int, value: int) -> None:
        """The device dies holding what it holds; the front-end scribbles on the record; a new device restores
        the ring's position and attaches the record."""
        self.scribble(arg)
        self.queue = create_device_queue(self.guest.mem, self.layout, self.features, twin=self.twin)
        self.held.clear()
        size = self.layout.size
        if value & 1:
            base = QueueState((value >> 1) % (2 * size), None, (value >> 8) & 1, 1)
        elif self.packed:
            base = QueueState(0, None, 1)
        else:
            base = QueueState(int.from_bytes(self.guest.mem.read(self.layout.used + 2, 2), "little"))
        self.call("restore", base)
        self.trace.append(("crash", self.attach()))

    def scribble(self, arg: int) -> None:
        for _ in range(arg % MAX_SCRIBBLES):
            offset, n = self.input.u16() % self.region_bytes, self.input.u8() % 8 + 1
            chunk = np.frombuffer(self.input.take(n), np.uint8)[: self.region_bytes - offset]
            self.region[offset: offset + len(chunk)] = chunk

    def run_all(self) -> list[Any]:
        for _ in range(device_program.MAX_OPS):
            if not self.input.more():
                break
            opcode, arg, value = self.input.u8(), self.input.u8(), self.input.u16()
            if opcode >= CRASH:
                self.crash(arg, value)
            elif opcode >= SCRIBBLE:
                self.scribble(arg)
            else:
                self.step(opcode % 13, arg, value)
            self.check_region()
            if self.queue.broken and not isinstance(self.call_broken(), QueueBroken):
                raise HarnessFailure("a broken queue still pops")
        self.revive()
        self.check_region()
        return self.trace


def run(twin: types.ModuleType, data: bytes) -> tuple[list[Any], bytes, bytes]:
    program = InflightProgram(twin, data[1:], packed=bool(data[0] & 1))
    trace = program.run_all()
    return trace, program.guest.regions_bytes(), bytes(program.region)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    c_trace, c_mem, c_region = run(CYTHON, data)
    py_trace, py_mem, py_region = run(PYTHON, data)
    if c_trace != py_trace:
        at = harness.first_difference(c_trace, py_trace)
        c_entry = c_trace[at] if at < len(c_trace) else None
        py_entry = py_trace[at] if at < len(py_trace) else None
        raise HarnessFailure(f"the twins' traces differ at entry {at}: cython {c_entry!r} != python {py_entry!r}")
    if c_mem != py_mem:
        raise HarnessFailure("the twins leave different guest memory")
    if c_region != py_region:
        at = harness.first_difference(c_region, py_region)
        raise HarnessFailure(f"the twins leave different inflight records (first difference at byte {at})")


if __name__ == "__main__":
    harness.fuzz(test_one_input)
