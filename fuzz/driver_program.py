"""The driver side of a ring driven by fuzzed bytes: the driver adds chains with tokens, the bytes play a hostile
device that writes the used ring (split) or used descriptors (packed) and its event area.

Input format (little-endian; missing bytes read as 0):
  u8 size code (1 << code % 6 entries), u8 feature bits (1 INDIRECT_DESC, 2 EVENT_IDX, 4 IN_ORDER),
  u8 indirect_max code (indirect_max = code % 4 + 1, indirect_threshold = code >> 2 % 4 + 1),
  then 4-byte operations: u8 opcode, u8 arg, u16 value, some followed by their own fields (see ``step``).

With ``raw_args`` (the twins harness) ``add`` takes addresses and lengths as they come, out of range included, so
that both twins' caller errors are compared too; otherwise every chain the harness adds is legal.
``run`` checks: only vring's errors, no token returned twice or invented, written lengths within what was offered,
canaries intact, bounded time per call, a MalformedUsed latches the queue broken.
"""

from __future__ import annotations

import struct
import types
from typing import Any

from device_program import features_of
from guest import DATA, DATA_END, RING, TABLES, CanaryMemory, HarnessFailure, Input, check_broken, outcome, timed

import vring
from vring import MalformedUsed, QueueBroken, QueueFull, contiguous_bytes, contiguous_layout, create_driver_queue

MAX_OPS = 48


class DriverProgram:
    def __init__(self, twin: types.ModuleType, data: bytes, packed: bool, raw_args: bool = False) -> None:
        self.twin = twin
        self.packed = packed
        self.raw_args = raw_args
        self.input = Input(data)
        size = 1 << (self.input.u8() % 6)
        self.features = features_of(self.input.u8(), packed)
        code = self.input.u8()
        self.guest = CanaryMemory(twin)
        self.layout = contiguous_layout(self.features, size, RING, align=4)
        self.ring_bytes = contiguous_bytes(self.features, size, align=4)
        self.queue = create_driver_queue(self.guest.mem, self.layout, self.features, twin=twin, indirect_area=TABLES,
                                         indirect_max=code % 4 + 1, indirect_threshold=(code >> 2) % 4 + 1)
        self.outstanding: dict[int, tuple[Any, int]] = {}  # head -> (token, writable bytes offered)
        self.next_token = 0
        self.trace: list[Any] = []

    def device_area(self) -> tuple[int, int]:
        """(gpa, bytes) of what the device may write: the used ring (split) or the descriptor ring (packed)."""
        if self.packed:
            return self.layout.desc, self.layout.desc_bytes
        return self.layout.used, self.layout.used_bytes

    def call(self, name: str, *args: Any) -> Any:
        try:
            result = timed(getattr(self.queue, name), *args)
        except Exception as err:
            # A legal chain may still be longer than a small queue: the one caller error the harness provokes.
            if not isinstance(err, (MalformedUsed, QueueBroken, QueueFull)) and not (
                    self.raw_args and isinstance(err, (ValueError, vring.AddressError))) and not (
                    isinstance(err, ValueError) and str(err).startswith("a chain of")):
                raise HarnessFailure(f"{name}: not an error the driver may meet: {type(err).__name__}: {err}") from err
            check_broken(self.queue, err, MalformedUsed)
            self.trace.append((name, outcome(err)))
            result = None
        self.guest.check_canaries()
        return result

    def returned(self, head: int | None, token: Any, written: int) -> None:
        """The device returned ``token`` (or, from the array calls, ``head``) with ``written`` bytes."""
        if head is None:
            heads = [h for h, (t, _) in self.outstanding.items() if t == token]
            if len(heads) != 1:
                raise HarnessFailure(f"token {token!r} returned but {len(heads)} chains hold it")
            head = heads[0]
        if head not in self.outstanding:
            raise HarnessFailure(f"head {head} returned but not outstanding (twice, or invented)")
        _, offered = self.outstanding.pop(head)
        if not 0 <= written <= offered:
            raise HarnessFailure(f"head {head} returned with {written} bytes written, {offered} offered")
        self.trace.append(("used", head, written))

    def segments(self, count: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(count):
            if self.raw_args:  # a mode byte takes the numbers out of their C types too: negative, or past 64 bits
                mode, addr, length = self.input.u8() % 4, self.input.u64(), self.input.u32()
                out.append((-addr if mode == 1 else addr + (1 << 64) * (mode == 3), length + (1 << 32) * (mode == 2)))
            else:
                addr = DATA + self.input.u16() % (DATA_END - DATA)
                out.append((addr, self.input.u16() % (DATA_END - addr) + 1))
        return out

    def add(self, arg: int) -> None:
        out, in_ = self.segments(arg & 3), self.segments((arg >> 2) & 3)
        if not out and not in_ and not self.raw_args:
            in_ = [(DATA, 1)]
        token = ("token", self.next_token)
        self.next_token += 1
        head = self.call("add", out, in_, token)
        if head is not None:
            if head in self.outstanding:
                raise HarnessFailure(f"add reused head {head}, which is still outstanding")
            self.outstanding[head] = (token, sum(n for _, n in in_))
            self.trace.append(("add", head))

    def add_batch(self, arg: int, value: int) -> None:
        count = arg % 4 + 1
        per = value % 3 + 1
        segs = [(addr, n, k >= per // 2) for k, (addr, n) in enumerate(self.segments(per))]
        batch = self.twin.Batch(count, count * per)
        try:
            batch.set_chains(segs, count)
        except ValueError as exc:  # a caller error (argument-range), worded alike by both twins; nothing written
            self.trace.append(("set_chains", type(exc).__name__, str(exc)))
            return
        added = self.call("add_batch", batch, count)
        if added is not None and added != batch.count:
            raise HarnessFailure(f"add_batch returned {added} but filled {batch.count}")
        writable = sum(n for _, n, w in segs if w)
        for k in range(batch.count):
            head = int(batch.heads[k])
            if head in self.outstanding:
                raise HarnessFailure(f"add_batch reused head {head}, which is still outstanding")
            self.outstanding[head] = (head, writable)  # get_used returns the head where there is no token
        self.trace.append(("add_batch", [int(h) for h in batch.heads[: batch.count]]))

    def step(self, opcode: int, arg: int, value: int) -> None:
        q = self.queue
        if opcode == 0:
            self.add(arg)
        elif opcode == 1:
            self.add_batch(arg, value)
        elif opcode == 2:
            self.trace.append(("kick", self.call("kick_needed")))
        elif opcode == 3:  # the device returns a buffer: used element ``arg`` (split) / used descriptor (packed)
            ident, written = value, self.input.u32()
            if self.packed:
                slot = arg % q.size
                flags = self.input.u16()
                self.guest.write(self.layout.desc + 16 * slot + 8, struct.pack("<IHH", written, ident, flags))
            else:
                self.guest.write(self.layout.used + 4 + 8 * (arg % q.size), struct.pack("<II", ident, written))
        elif opcode == 4:  # the device publishes a used index (split) / writes its event area (packed)
            if self.packed:
                self.guest.write(self.layout.device_event, struct.pack("<HH", value, arg))
            else:
                self.guest.write(self.layout.used, struct.pack("<HH", arg, value))
        elif opcode == 5:  # a hostile device scribbles anywhere in what it may write
            gpa, n = self.device_area()
            self.guest.write(gpa + (arg * 2 + (value >> 8) * 512) % n, struct.pack("<H", value))
        elif opcode == 6:
            got = self.call("get_used")
            if got is not None:
                self.returned(None, got[0], got[1])
        elif opcode == 7:
            for token, written in self.call("pop_used", None if arg & 1 else arg % 4 + 1) or []:
                self.returned(None, token, written)
        elif opcode == 8:
            batch = self.twin.Batch(arg % 4 + 1)
            n = self.call("reap_batch", batch)
            if n is not None and n != batch.count:
                raise HarnessFailure(f"reap_batch returned {n} but filled {batch.count}")
            for k in range(batch.count):
                self.returned(int(batch.heads[k]), None, int(batch.lens[k]))
        elif opcode == 9:
            if arg & 1:
                self.trace.append(("enable", self.call("enable_interrupts")))
            else:
                self.call("disable_interrupts")
        elif opcode == 10:
            self.call("reset")
            self.outstanding.clear()
        elif opcode == 11:
            self.trace.append(("in_flight", q.in_flight, q.num_free))
        if not q.broken:
            tokens = sorted(self.outstanding)
            self.trace.append(("outstanding", tokens, q.num_free))

    def run(self) -> list[Any]:
        for _ in range(MAX_OPS):
            if not self.input.more():
                break
            self.step(self.input.u8() % 12, self.input.u8(), self.input.u16())
        return self.trace


def run(twin: types.ModuleType, data: bytes, packed: bool, raw_args: bool = False) -> tuple[list[Any], bytes]:
    """The trace and the guest memory's bytes after running ``data`` on ``twin``."""
    program = DriverProgram(twin, data, packed, raw_args)
    trace = program.run()
    return trace, program.guest.regions_bytes()
