"""One place that turns negotiated features into a queue (Linux's vring_create_virtqueue): split or packed,
driver or device side, on either twin. Transports, drivers, benchmarks and tests all create queues here."""

from __future__ import annotations

import types
from typing import Any

from ._errors import caller_error
from ._features import Feature
from ._layout import PackedLayout, RingLayout, SplitLayout
from ._twin import ENGINE


def _twin(twin: types.ModuleType | None) -> Any:
    return ENGINE if twin is None else twin  # by default the twin vring chose at import


def _check_kind(layout: RingLayout, features: int) -> bool:
    """True for a packed ring; a layout that disagrees with the RING_PACKED bit is refused."""
    packed = bool(features & Feature.RING_PACKED)
    want = PackedLayout if packed else SplitLayout
    if not isinstance(layout, want):
        raise caller_error("layout-kind", kind="packed" if packed else "split", layout=want.__name__,
                           given=type(layout).__name__)
    return packed


def create_device_queue(mem: Any, layout: RingLayout, features: int, *, twin: types.ModuleType | None = None,
                        **options: Any) -> Any:
    """The device side of a ring: ``PackedDeviceQueue`` when ``features`` has RING_PACKED, else ``DeviceQueue``."""
    impl = _twin(twin)
    cls = impl.PackedDeviceQueue if _check_kind(layout, features) else impl.DeviceQueue
    return cls(mem, layout, features, **options)


def create_driver_queue(mem: Any, layout: RingLayout, features: int, *, twin: types.ModuleType | None = None,
                        **options: Any) -> Any:
    """The driver side of a ring: ``PackedDriverQueue`` when ``features`` has RING_PACKED, else ``DriverQueue``."""
    impl = _twin(twin)
    cls = impl.PackedDriverQueue if _check_kind(layout, features) else impl.DriverQueue
    return cls(mem, layout, features, **options)


def contiguous_layout(features: int, size: int, base: int, align: int = 4096) -> RingLayout:
    """A ring of ``size`` in one area at ``base``, split or packed as ``features`` say (see ``contiguous_bytes``)."""
    if features & Feature.RING_PACKED:
        return PackedLayout.contiguous(size, base)
    return SplitLayout.contiguous(size, base, align)


def contiguous_bytes(features: int, size: int, align: int = 4096) -> int:
    """Bytes ``contiguous_layout`` takes."""
    if features & Feature.RING_PACKED:
        return PackedLayout.contiguous_bytes(size)
    return SplitLayout.contiguous_bytes(size, align)
