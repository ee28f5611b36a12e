"""Saved device-side queue state (reconnect, migration): what vhost-user's GET/SET_VRING_BASE carries."""

from __future__ import annotations

from typing import NamedTuple


class QueueState(NamedTuple):
    """Where the device is in the rings.

    ``used_idx`` of None on ``restore`` means "read it from the used ring", as a vhost-user backend does when it
    takes over a ring a previous backend served.
    """

    last_avail_idx: int
    used_idx: int | None = None
    avail_wrap: int = 1  # packed rings: the wrap counters (vhost-user carries avail_wrap in bit 15 of the base)
    used_wrap: int = 1
