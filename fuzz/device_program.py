"""The device side of a ring driven by fuzzed bytes: the bytes are a hostile driver's ring (descriptors, avail ring
or packed descriptors, indices, event areas, indirect tables) plus a program of device calls and driver scribbles.

Input format (every field little-endian; missing bytes read as 0):
  u8 size code (ring of 1 << code % 6 entries), u8 feature bits (1 INDIRECT_DESC, 2 EVENT_IDX, 4 IN_ORDER),
  u8 max_indirect (0: the engine's default), then the ring area's bytes (``contiguous_bytes``, align 4),
  then TABLE_BYTES bytes at ``TABLES`` (indirect tables), then 4-byte operations: u8 opcode, u8 arg, u16 value.

``run`` returns the trace (what each call returned or raised) and checks the invariants as it goes: only vring's
errors, canaries intact, bounded time per call, an error latches the queue broken, ``reset`` revives it.
"""

from __future__ import annotations

import struct
import types
from typing import Any

from guest import (
    DATA,
    RING,
    TABLES,
    CanaryMemory,
    HarnessFailure,
    Input,
    check_broken,
    check_vring_error,
    outcome,
    timed,
)

from vring import Feature, MalformedChain, QueueBroken, contiguous_bytes, contiguous_layout, create_device_queue

TABLE_BYTES = 256
MAX_OPS = 48
# The caller errors a device may meet with legal calls: a chain too long for the harness's batch, a state outside
# the ring on restore.
CALLER_ERRORS = ("a chain of", "state ")
AVAIL, USED, WRITE = 1 << 7, 1 << 15, 2


def features_of(bits: int, packed: bool) -> int:
    features = Feature.VERSION_1 | (Feature.RING_PACKED if packed else 0)
    if bits & 1:
        features |= Feature.INDIRECT_DESC
    if bits & 2:
        features |= Feature.EVENT_IDX
    if bits & 4:
        features |= Feature.IN_ORDER
    return int(features)


def chain_summary(mem: Any, chain: Any) -> tuple[Any, ...]:
    """A chain as a trace entry, after checking that its segments lie in guest memory and add up."""
    segments = tuple(chain.segments)
    readable = sum(n for _, n, w in segments if not w)
    writable = sum(n for _, n, w in segments if w)
    if (readable, writable) != (chain.readable_len, chain.writable_len):
        raise HarnessFailure(f"chain {chain.head}: segments {segments} do not add up to its lengths")
    seen_writable = False
    for gpa, n, w in segments:
        if not mem.contains(gpa, n) or n == 0:
            raise HarnessFailure(f"chain {chain.head}: segment {gpa:#x} (+{n}) is not in guest memory")
        if seen_writable and not w:
            raise HarnessFailure(f"chain {chain.head}: a readable segment after a writable one")
        seen_writable |= w
    return chain.head, segments, chain.indirect


class DeviceProgram:
    def __init__(self, twin: types.ModuleType, data: bytes, packed: bool) -> None:
        self.twin = twin
        self.packed = packed
        self.input = Input(data)
        size = 1 << (self.input.u8() % 6)
        self.features = features_of(self.input.u8(), packed)
        max_indirect = self.input.u8()
        self.guest = CanaryMemory(twin)
        self.layout = contiguous_layout(self.features, size, RING, align=4)
        self.ring_bytes = contiguous_bytes(self.features, size, align=4)
        self.guest.write(RING, self.input.take(self.ring_bytes))
        self.guest.write(TABLES, self.input.take(TABLE_BYTES))
        options = {"max_indirect": max_indirect} if max_indirect else {}
        self.queue = create_device_queue(self.guest.mem, self.layout, self.features, twin=twin, **options)
        self.held: dict[int, tuple[Any, int]] = {}  # head -> (Chain or None, writable bytes)
        self.trace: list[Any] = []

    # -- one call, with the checks every call gets ---------------------------------------------------------
    def call(self, name: str, *args: Any) -> Any:
        try:
            result = timed(getattr(self.queue, name), *args)
        except Exception as err:
            check_vring_error(err, CALLER_ERRORS)
            check_broken(self.queue, err, MalformedChain)
            if self.queue.broken:
                self.held.clear()  # a broken queue's chains are never pushed; reset forgets them
            self.trace.append((name, outcome(err)))
            result = None
        self.guest.check_canaries()
        return result

    def take_chains(self, chains: list[Any]) -> None:
        for chain in chains:
            if chain.head in self.held:
                raise HarnessFailure(f"head {chain.head} popped while the device still holds it")
            self.held[chain.head] = (chain, chain.writable_len)
        self.trace.append(("chains", [chain_summary(self.guest.mem, c) for c in chains]))

    def pick(self, arg: int) -> tuple[int, int]:
        head = sorted(self.held)[arg % len(self.held)]
        return head, self.held[head][1]

    # -- the operations ------------------------------------------------------------------------------------
    def step(self, opcode: int, arg: int, value: int) -> None:
        q = self.queue
        if opcode == 0:
            chain = self.call("pop")
            self.take_chains([chain] if chain is not None else [])
        elif opcode == 1:
            self.take_chains(self.call("pop_many", arg % 8 + 1) or [])
        elif opcode == 2:
            batch = self.twin.Batch(arg % 4 + 1, value % 16 + 1)
            count = self.call("pop_batch", batch)
            if count is not None and count != batch.count:
                raise HarnessFailure(f"pop_batch returned {count} but filled {batch.count}")
            for k in range(batch.count):
                head = int(batch.heads[k])
                if head in self.held:
                    raise HarnessFailure(f"head {head} batch-popped while the device still holds it")
                self.held[head] = (None, int(batch.writable_len[k]))
                for gpa, n, _ in batch.segments(k):
                    if not self.guest.mem.contains(gpa, n) or n == 0:
                        raise HarnessFailure(f"batch chain {head}: segment {gpa:#x} (+{n}) is not in guest memory")
            self.trace.append(("batch", [(int(batch.heads[k]), batch.segments(k), int(batch.readable_len[k]),
                                          int(batch.writable_len[k])) for k in range(batch.count)]))
        elif opcode in (3, 4, 5) and self.held:
            heads = [self.pick(arg)] if opcode == 3 else [self.pick(arg + k) for k in range(value % 3 + 1)]
            heads = list(dict(heads).items())  # each head once
            lens = [value % (wlen + 1) for _, wlen in heads]
            for (head, _), n in zip(heads, lens):
                chain = self.held[head][0]
                if chain is not None and n:
                    chain.write(bytes([arg]) * n)  # fill what the push claims written, through the chain's views
            if opcode == 3:
                self.call("push", heads[0][0], lens[0])
            elif opcode == 4:
                self.call("push_many", [h for h, _ in heads], lens)
            else:
                batch = self.twin.Batch(len(heads))
                for k, ((head, _), n) in enumerate(zip(heads, lens)):
                    batch.heads[k], batch.lens[k] = head, n
                batch.count = len(heads)
                self.call("push_batch", batch)
            if not q.broken:
                for head, _ in heads:
                    del self.held[head]
        elif opcode == 6:
            self.trace.append(("notify", self.call("notify_needed")))
        elif opcode == 7:
            if arg & 1:
                self.trace.append(("enable", self.call("enable_notifications")))
            else:
                self.call("disable_notifications")
        elif opcode == 8:  # the driver scribbles on its side of the ring meanwhile
            self.guest.write(RING + (arg * 2 + (value >> 8) * 512) % self.ring_bytes, struct.pack("<H", value))
        elif opcode == 9:  # the driver makes one more chain available (split) or slot ``arg`` available (packed)
            self.publish(arg, value)
        elif opcode == 10:
            self.call("reset")
            self.held.clear()
        elif opcode == 11:
            self.call("restore", (value % (2 * q.size), None if arg & 1 else arg % (2 * q.size), arg >> 7, 1))
            self.held.clear()
        elif opcode == 12:
            self.trace.append(("pending", self.call("avail_pending")))
        self.trace.append(("state", tuple(q.state) if not q.broken else "broken"))

    def publish(self, arg: int, value: int) -> None:
        layout = self.layout
        if self.packed:
            flags = (value & ~(AVAIL | USED) & 0xFFFF) | (AVAIL if arg & 0x80 else USED)
            slot = arg % layout.size
            self.guest.write(layout.desc + 16 * slot + 12, struct.pack("<HH", value % layout.size, flags))
        else:
            ring = self.guest.mem.read(layout.avail, 4)
            idx = struct.unpack("<H", ring[2:])[0]
            self.guest.write(layout.avail + 4 + 2 * (idx % layout.size), struct.pack("<H", arg % layout.size))
            self.guest.write(layout.avail + 2, struct.pack("<H", (idx + 1) & 0xFFFF))

    def revive(self) -> None:
        """After ``reset``, a well-formed chain of one writable buffer is served and returned whatever came before."""
        q = self.queue
        timed(q.reset)
        self.held.clear()
        for gpa, n in self.layout.areas():
            self.guest.write(gpa, bytes(n))
        if self.packed:
            self.guest.write(self.layout.desc, struct.pack("<QIHH", DATA, 64, 0, WRITE | AVAIL))
        else:
            self.guest.write(self.layout.desc, struct.pack("<QIHH", DATA, 64, WRITE, 0))
            self.guest.write(self.layout.avail, struct.pack("<HHH", 0, 1, 0))
        chain = timed(q.pop)
        if chain is None or chain.head != 0 or tuple(chain.segments) != ((DATA, 64, True),):
            raise HarnessFailure(f"after reset, a well-formed chain pops as {chain!r}")
        timed(q.push, 0, 64)
        if self.packed:
            used = struct.unpack("<QIHH", self.guest.mem.read(self.layout.desc, 16))
            if used[1:] != (64, 0, WRITE | AVAIL | USED):
                raise HarnessFailure(f"after reset, the used descriptor reads {used}")
        else:
            used = struct.unpack("<HHII", self.guest.mem.read(self.layout.used, 12))
            if used != (0, 1, 0, 64):
                raise HarnessFailure(f"after reset, the used ring reads {used}")
        self.guest.check_canaries()

    def run(self, revive: bool = True) -> list[Any]:
        for _ in range(MAX_OPS):
            if not self.input.more():
                break
            opcode, arg, value = self.input.u8() % 13, self.input.u8(), self.input.u16()
            self.step(opcode, arg, value)
            if self.queue.broken:
                if not isinstance(self.call_broken(), QueueBroken):
                    raise HarnessFailure("a broken queue still pops")
        if revive:
            self.revive()
        return self.trace

    def call_broken(self) -> Any:
        try:
            self.queue.pop()
        except QueueBroken as err:
            return err
        return None


def run(twin: types.ModuleType, data: bytes, packed: bool, revive: bool = True) -> tuple[list[Any], bytes]:
    """The trace and the guest memory's bytes after running ``data`` on ``twin``."""
    program = DeviceProgram(twin, data, packed)
    trace = program.run(revive)
    return trace, program.guest.regions_bytes()
