"""`vring demo`: a driver and a device talking over one buffer (the README's example, runnable)."""

from __future__ import annotations

import argparse

import vring
from vring import Feature, SplitLayout

EXAMPLES = """examples:
  vring demo
  VRING_PUREPYTHON=1 vring demo    # the same exchange on the pure-Python twin"""


def add_arguments(_parser: argparse.ArgumentParser) -> None:
    """`vring demo` takes no arguments."""


def run(_args: argparse.Namespace) -> int:
    mem = vring.GuestMemory()
    ram = bytearray(1 << 20)  # the "guest's" memory: any writable buffer (bytearray, mmap, numpy array)
    mem.add_region(0x4000_0000, ram)  # at guest-physical address 1 GiB
    layout = SplitLayout.contiguous(256, 0x4000_0000)
    features = Feature.VERSION_1 | Feature.EVENT_IDX | Feature.INDIRECT_DESC

    driver = vring.DriverQueue(mem, layout, features, indirect_area=0x4001_0000)
    device = vring.DeviceQueue(mem, layout, features)

    # The driver makes a request available: a buffer the device reads, then one it writes.
    mem.write(0x4008_0000, b"ping")
    driver.add(out=[(0x4008_0000, 4)], in_=[(0x4009_0000, 64)], token="request 1")
    print(f"driver: added a chain; kick needed: {driver.kick_needed()}")

    # The device pops the chain, answers into the writable buffer and returns it.
    chain = device.pop()
    assert chain is not None
    request = chain.read()
    written = chain.write(b"pong to " + request)
    device.push(chain.head, written)
    print(f"device: popped head {chain.head} ({chain.readable_len} bytes in, {chain.writable_len} out), "
          f"read {request!r}; interrupt needed: {device.notify_needed()}")

    for token, n in driver.pop_used():
        print(f"driver: {token!r} came back with {mem.read(0x4009_0000, n)!r}")
    print(f"engine: {vring.IMPLEMENTATION}")
    return 0
