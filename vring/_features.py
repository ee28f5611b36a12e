"""Feature bits of the virtio transport layer (spec section "Reserved Feature Bits") and ring constants."""

from __future__ import annotations

import enum


class Feature(enum.IntFlag):
    """Device-independent feature bits (24 to 41); device types add their own below bit 24."""

    NOTIFY_ON_EMPTY = 1 << 24  # legacy
    ANY_LAYOUT = 1 << 27  # legacy
    INDIRECT_DESC = 1 << 28
    EVENT_IDX = 1 << 29
    VERSION_1 = 1 << 32
    ACCESS_PLATFORM = 1 << 33
    RING_PACKED = 1 << 34
    IN_ORDER = 1 << 35
    ORDER_PLATFORM = 1 << 36
    SR_IOV = 1 << 37
    NOTIFICATION_DATA = 1 << 38
    NOTIF_CONFIG_DATA = 1 << 39
    RING_RESET = 1 << 40
    ADMIN_VQ = 1 << 41


# Descriptor flags (struct virtq_desc.flags).
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
# Packed rings: descriptor flag bits and event suppression flags (spec 2.8).
PACKED_DESC_F_AVAIL = 1 << 7
PACKED_DESC_F_USED = 1 << 15
EVENT_FLAG_ENABLE = 0
EVENT_FLAG_DISABLE = 1
EVENT_FLAG_DESC = 2
# avail->flags and used->flags.
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1

DESC_SIZE = 16
MAX_QUEUE_SIZE = 32768
# Default cap on the entries of one indirect table (QEMU's VIRTQUEUE_MAX_SIZE).
DEFAULT_MAX_INDIRECT = 1024

# The features the engine implements (what `vring info` reports and devices offer). IN_ORDER is understood by the
# drivers (a packed ring's batched used descriptors) but not offered by devices, which complete out of order.
ENGINE_FEATURES = Feature.VERSION_1 | Feature.INDIRECT_DESC | Feature.EVENT_IDX | Feature.RING_PACKED


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """vring_need_event of the spec: did the index move past ``event_idx`` going from old to new (mod 2**16)?"""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)
