"""QueueState's serialised forms: versioned bytes and JSON that round-trip, and refuse what is not a state."""

from __future__ import annotations

import json

import pytest

from vring import QueueState, StateError
from vring.testing import DATA, make_pair

STATES = [QueueState(0), QueueState(5, 3), QueueState(0xFFFF, 0xFFFF, 0, 0), QueueState(17, 17, 1, 0)]


@pytest.mark.parametrize("state", STATES)
def test_round_trips(state):
    assert QueueState.from_bytes(state.to_bytes()) == state
    assert QueueState.from_json(state.to_json()) == state
    assert len(state.to_bytes()) == 12 and state.to_bytes()[:5] == b"VRQS\x01"


def test_a_device_queue_state_round_trips(twin):
    p = make_pair(twin, packed=True)
    for _ in range(20):  # past a wrap of the 16-entry ring
        p.drv.add(out=[(0x180000, 8)], token=None)
        p.drv.kick_needed()
        chain = p.dev.pop()
        p.dev.push(chain.head, 0)
        p.drv.pop_used()
    state = p.dev.state
    assert state.avail_wrap == 0
    assert QueueState.from_json(state.to_json()) == state == QueueState.from_bytes(state.to_bytes())


@pytest.mark.parametrize("data, error", [
    (b"VRQS\x01\x01" + bytes(5), "11 bytes, expected 12"),
    (b"XXXX\x01\x01" + bytes(6), "starts with b'XXXX'"),
    (b"VRQS\x02\x01" + bytes(6), "version 2"),
    (b"VRQS\x01\x03" + bytes(6), "unknown flags 0x2"),
    (b"VRQS\x01\x01" + bytes(4) + b"\x02\x00", "avail_wrap 2"),
])
def test_bad_bytes_are_refused(data, error):
    with pytest.raises(StateError, match=error.replace("(", r"\(")) as exc:
        QueueState.from_bytes(data)
    assert exc.value.reason == "queue-state"


@pytest.mark.parametrize("obj, error", [
    ("not json", "not JSON"),
    ({"format": "other", "version": 1, "last_avail_idx": 0}, "not a vring.QueueState object"),
    ({"format": "vring.QueueState", "version": 9, "last_avail_idx": 0}, "version 9"),
    ({"format": "vring.QueueState", "version": 1}, "last_avail_idx is missing"),
    ({"format": "vring.QueueState", "version": 1, "last_avail_idx": 0, "extra": 1}, "unknown fields"),
    ({"format": "vring.QueueState", "version": 1, "last_avail_idx": 65536}, "last_avail_idx 65536"),
    ({"format": "vring.QueueState", "version": 1, "last_avail_idx": "3"}, "last_avail_idx '3'"),
    ({"format": "vring.QueueState", "version": 1, "last_avail_idx": True}, "last_avail_idx True"),
    ({"format": "vring.QueueState", "version": 1, "last_avail_idx": 0, "used_wrap": -1}, "used_wrap -1"),
])
def test_bad_json_is_refused(obj, error):
    text = obj if isinstance(obj, str) else json.dumps(obj)
    with pytest.raises(StateError, match=error):
        QueueState.from_json(text)


def test_an_out_of_range_state_is_not_serialised():
    with pytest.raises(StateError, match="used_idx 70000"):
        QueueState(0, 70000).to_bytes()


# -- restore() checks the state against the ring ----------------------------------------------------------------
def test_restore_refuses_a_split_state_the_ring_cannot_be_in(twin):
    p = make_pair(twin, size=8)
    for _ in range(3):
        p.drv.add([(DATA, 8)])
    p.drv.kick_needed()
    p.dev.pop()
    state = p.dev.state
    with pytest.raises(StateError, match="last_avail_idx 65000 is 539 chains behind the avail ring's idx 3"):
        p.dev.restore(QueueState(65000))
    with pytest.raises(StateError, match="used_idx 70000"):
        p.dev.restore(QueueState(1, 70000))
    assert p.dev.state == state and not p.dev.broken  # unchanged: the chain popped is still held
    p.dev.push(0)
    p.dev.restore(QueueState(3))
    assert p.dev.state == QueueState(3, 1)


def test_restore_refuses_a_packed_state_outside_the_ring(twin):
    p = make_pair(twin, size=8, packed=True)
    state = p.dev.state
    for bad, field in [(QueueState(8), "last_avail_idx 8"), (QueueState(0, 9), "used_idx 9"),
                       (QueueState(0, 0, 2), "avail_wrap 2"), (QueueState(0, 0, 1, 5), "used_wrap 5")]:
        with pytest.raises(StateError, match=field):
            p.dev.restore(bad)
        assert p.dev.state == state and not p.dev.broken
    p.dev.restore(QueueState(7, 5, 0, 1))
    assert p.dev.state == QueueState(7, 5, 0, 1)
