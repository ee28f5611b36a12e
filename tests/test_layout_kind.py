"""Each queue class takes only a layout of its own kind: a split queue over a PackedLayout would write past the
4-byte event areas (and a packed one over a SplitLayout would misread the rings). Both twins refuse it first."""

from __future__ import annotations

import pytest

from vring import LayoutError, PackedLayout, SplitLayout

from vring.testing import BASE, MEM_SIZE

SPLIT = SplitLayout.contiguous(16, BASE)
PACKED = PackedLayout.contiguous(16, BASE)

CASES = [
    ("DeviceQueue", PACKED, "split", "SplitLayout", {"max_indirect": 0}),
    ("DriverQueue", PACKED, "split", "SplitLayout", {"indirect_max": 0}),
    ("PackedDeviceQueue", SPLIT, "packed", "PackedLayout", {"max_indirect": 0}),
    ("PackedDriverQueue", SPLIT, "packed", "PackedLayout", {"indirect_max": 0}),
]


@pytest.mark.parametrize("name, layout, kind, wanted, bad_option", CASES, ids=[c[0] for c in CASES])
def test_a_layout_of_the_other_kind_is_refused(twin, name, layout, kind, wanted, bad_option):
    mem = twin.GuestMemory()
    mem.add_region(BASE, bytearray(MEM_SIZE))
    with pytest.raises(LayoutError) as info:
        getattr(twin, name)(mem, layout, 0)
    assert str(info.value) == f"a {kind} queue needs a {wanted}, not a {type(layout).__name__}"
    # The very first check: before the options, and before the layout is looked up in guest memory.
    with pytest.raises(LayoutError):
        getattr(twin, name)(mem, layout, 0, **bad_option)
    with pytest.raises(LayoutError):
        getattr(twin, name)(twin.GuestMemory(), layout, 0)


@pytest.mark.parametrize("name, layout", [("DeviceQueue", SPLIT), ("DriverQueue", SPLIT),
                                          ("PackedDeviceQueue", PACKED), ("PackedDriverQueue", PACKED)])
def test_a_layout_of_the_right_kind_is_taken(twin, name, layout):
    mem = twin.GuestMemory()
    mem.add_region(BASE, bytearray(MEM_SIZE))
    assert getattr(twin, name)(mem, layout, 0).size == 16
