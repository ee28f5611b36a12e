"""Saved device-side queue state (reconnect, snapshot, migration): what vhost-user's GET/SET_VRING_BASE carries,
with a versioned serialised form in bytes and in JSON."""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

from ._errors import VringError

FORMAT = "vring.QueueState"
VERSION = 1
# magic, version, flags (bit 0: used_idx present), last_avail_idx, used_idx, avail_wrap, used_wrap; little-endian
_WIRE = struct.Struct("<4sBBHHBB")
_MAGIC = b"VRQS"
_USED_IDX_PRESENT = 1
_FIELDS = ("last_avail_idx", "used_idx", "avail_wrap", "used_wrap")


class StateError(VringError, ValueError):
    """A serialised queue state that is not one: wrong format, version, length, or a field out of range."""

    reason = "queue-state"


class QueueState(NamedTuple):
    """Where the device is in the rings.

    ``used_idx`` of None on ``restore`` means "read it from the used ring" (split), "where the driver's next chain
    starts" (packed), as a vhost-user backend does when it takes over a ring a previous backend served. Indices
    are 16-bit; the wrap counters (packed rings) are 0 or 1. ``restore`` checks the state against the ring
    (``checked_split`` / ``checked_packed``) before it changes anything.

    Serialised forms, both versioned (``VERSION``), both refused whole (StateError) when they are not a state:

    - ``to_bytes``: 12 bytes, little-endian: ``b"VRQS"``, u8 version, u8 flags (bit 0: used_idx present),
      u16 last_avail_idx, u16 used_idx (0 when absent), u8 avail_wrap, u8 used_wrap.
    - ``to_json``: an object ``{"format": "vring.QueueState", "version": 1, "last_avail_idx": ...,
      "used_idx": ... or null, "avail_wrap": ..., "used_wrap": ...}``; ``from_json`` refuses unknown fields.
    """

    last_avail_idx: int
    used_idx: int | None = None
    avail_wrap: int = 1  # packed rings: the wrap counters (vhost-user carries avail_wrap in bit 15 of the base)
    used_wrap: int = 1

    def checked(self) -> "QueueState":
        """This state if every field is in range, else StateError naming the field."""
        for name in _FIELDS:
            value = getattr(self, name)
            if name == "used_idx" and value is None:
                continue
            limit = 2 if name.endswith("wrap") else 1 << 16
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
                raise StateError(f"queue state: {name} {value!r} is not an integer from 0 to {limit - 1}")
        return self

    def checked_split(self, size: int, avail_idx: int) -> "QueueState":
        """This state if a split ring of ``size`` can be there: at most ``size`` chains made available and not yet
        popped (the avail ring's idx ``avail_idx`` - last_avail_idx), else StateError naming the field. used_idx
        may trail last_avail_idx by any amount: restoring drops the chains the device held, and a device may
        abandon chains that way (restore past a malformed one)."""
        self.checked()
        last = self.last_avail_idx
        waiting = (avail_idx - last) & 0xFFFF
        if waiting > size:
            raise StateError(f"queue state: last_avail_idx {last} is {waiting} chains behind the avail ring's idx "
                             f"{avail_idx}, more than the ring's {size}")
        return self

    def checked_packed(self, size: int) -> "QueueState":
        """This state if it names slots of a packed ring of ``size``; else StateError naming the field."""
        self.checked()
        for name in ("last_avail_idx", "used_idx"):
            value = getattr(self, name)
            if value is not None and value >= size:
                raise StateError(f"queue state: {name} {value} is not a slot of a ring of {size}")
        return self

    def to_bytes(self) -> bytes:
        """The state in 12 bytes: b"VRQS", version, flags, then the fields little-endian."""
        self.checked()
        flags = _USED_IDX_PRESENT if self.used_idx is not None else 0
        return _WIRE.pack(_MAGIC, VERSION, flags, self.last_avail_idx, self.used_idx or 0, self.avail_wrap,
                          self.used_wrap)

    @classmethod
    def from_bytes(cls, data: bytes) -> "QueueState":
        if len(data) != _WIRE.size:
            raise StateError(f"queue state: {len(data)} bytes, expected {_WIRE.size}")
        magic, version, flags, last_avail, used, avail_wrap, used_wrap = _WIRE.unpack(data)
        if magic != _MAGIC:
            raise StateError(f"queue state: starts with {magic!r}, not {_MAGIC!r}")
        if version != VERSION:
            raise StateError(f"queue state: version {version}, this vring reads version {VERSION}")
        if flags & ~_USED_IDX_PRESENT:
            raise StateError(f"queue state: unknown flags {flags & ~_USED_IDX_PRESENT:#x}")
        return cls(last_avail, used if flags & _USED_IDX_PRESENT else None, avail_wrap, used_wrap).checked()

    def to_json(self) -> str:
        """The state as a JSON object naming its format and version."""
        self.checked()
        return json.dumps({"format": FORMAT, "version": VERSION, **self._asdict()})

    @classmethod
    def from_json(cls, text: str) -> "QueueState":
        try:
            obj: Any = json.loads(text)
        except ValueError as exc:
            raise StateError(f"queue state: not JSON ({exc})") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise StateError(f"queue state: not a {FORMAT} object")
        if obj.get("version") != VERSION:
            raise StateError(f"queue state: version {obj.get('version')!r}, this vring reads version {VERSION}")
        extra = set(obj) - {"format", "version", *_FIELDS}
        if extra:
            raise StateError(f"queue state: unknown fields {sorted(extra)}")
        if "last_avail_idx" not in obj:
            raise StateError("queue state: last_avail_idx is missing")
        return cls(**{name: obj[name] for name in _FIELDS if name in obj}).checked()
