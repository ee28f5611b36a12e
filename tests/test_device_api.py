"""The device API's view of the engine: both twins' chains and device queues, split and packed, are what
``vring.device.Chain`` and ``vring.device.DeviceQueue`` describe."""

from __future__ import annotations

import pytest

import vring
from vring import Feature
from vring.device import Chain, DeviceQueue

BASE = 0x10000
SIZE = 8


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_engine_classes_satisfy_the_protocols(twin, packed):
    features = Feature.VERSION_1 | (Feature.RING_PACKED if packed else 0)
    mem = twin.GuestMemory()
    mem.add_region(BASE, bytearray(1 << 16))
    layout = vring.contiguous_layout(features, SIZE, BASE)
    driver = vring.create_driver_queue(mem, layout, features, twin=twin)
    device = vring.create_device_queue(mem, layout, features, twin=twin)
    driver.add([(BASE + 0x8000, 16)], [(BASE + 0x9000, 1)])
    driver.kick_needed()
    chain = device.pop()
    assert isinstance(device, DeviceQueue) and isinstance(chain, Chain)
    assert not isinstance(driver, DeviceQueue)  # the check means something: a driver queue pops nothing
