"""virtio-blk request parsing without I/O: real engine chains (both twins, split and packed, direct and indirect)
handed to ``Request.parse``, for every request type and every malformed shape the device must answer."""

from __future__ import annotations

import struct
import types
from dataclasses import dataclass
from typing import Any

import pytest

import vring
from vring import Feature
from vring.devices import blk
from vring.devices.blk import NoStatusByte, Request, RequestError, ShortHeader

SIZE = 16
BASE = 0x40000  # guest-physical base of the memory (not 0, so that address bugs show)
MEM_SIZE = 1 << 18
HDR, BUF, BUF2, STATUS = BASE + 0x20000, BASE + 0x21000, BASE + 0x23000, BASE + 0x30000


@dataclass
class Ring:
    mem: Any
    driver: Any
    device: Any

    def pop(self, out: list[tuple[int, int]], in_: list[tuple[int, int]]) -> Any:
        """Add one chain on the driver side and return it as the device pops it."""
        head = self.driver.add(out, in_)
        self.driver.kick_needed()
        chain = self.device.pop()
        assert chain is not None and chain.head == head
        return chain

    def parse(self, out: list[tuple[int, int]], in_: list[tuple[int, int]]) -> Request:
        return Request.parse(self.pop(out, in_))


@pytest.fixture(params=["split", "packed", "split-indirect", "packed-indirect"])
def ring(twin: types.ModuleType, request: pytest.FixtureRequest) -> Ring:
    features = Feature.VERSION_1 | (Feature.RING_PACKED if request.param.startswith("packed") else 0)
    options: dict[str, Any] = {}
    if request.param.endswith("indirect"):
        features |= Feature.INDIRECT_DESC
        options["indirect_area"] = BASE + vring.contiguous_bytes(features, SIZE)
    mem = twin.GuestMemory()
    mem.add_region(BASE, bytearray(MEM_SIZE))
    layout = vring.contiguous_layout(features, SIZE, BASE)
    driver = vring.create_driver_queue(mem, layout, features, twin=twin, **options)
    device = vring.create_device_queue(mem, layout, features, twin=twin)
    return Ring(mem, driver, device)


def header(rtype: int, sector: int = 0) -> bytes:
    return struct.pack("<IIQ", rtype, 0xDEAD, sector)  # a reserved field that is not zero is ignored


def assert_status_is(ring: Ring, request_status: memoryview, gpa: int) -> None:
    """The status view is the one byte at ``gpa``: what the device writes there lands in guest memory."""
    assert request_status.nbytes == 1
    request_status[0] = 0x5A
    assert ring.mem.read(gpa, 1) == b"\x5a"


# -- one test per request type ---------------------------------------------------------------------------------
def test_read_gives_the_writable_data_before_the_status(ring):
    ring.mem.write(HDR, header(blk.T_IN, 7))
    request = ring.parse([(HDR, 16)], [(BUF, 512), (BUF2, 1024), (STATUS, 1)])
    assert (request.request_type, request.sector, request.data_len) == (blk.T_IN, 7, 1536)
    assert [view.nbytes for view in request.data] == [512, 1024]
    request.data[0][:] = b"a" * 512
    request.data[1][:] = b"b" * 1024
    assert ring.mem.read(BUF, 512) == b"a" * 512 and ring.mem.read(BUF2, 1024) == b"b" * 1024
    assert_status_is(ring, request.status, STATUS)


def test_get_id_gives_the_writable_data(ring):
    ring.mem.write(HDR, header(blk.T_GET_ID))
    request = ring.parse([(HDR, 16)], [(BUF, blk.ID_BYTES), (STATUS, 1)])
    assert (request.request_type, request.data_len) == (blk.T_GET_ID, blk.ID_BYTES)
    assert [view.nbytes for view in request.data] == [blk.ID_BYTES]
    assert_status_is(ring, request.status, STATUS)


def test_write_gives_the_readable_payload_after_the_header(ring):
    ring.mem.write(HDR, header(blk.T_OUT, (1 << 64) - 1))  # the sector is parsed, not range-checked
    ring.mem.write(BUF, b"w" * 512)
    ring.mem.write(BUF2, b"x" * 512)
    request = ring.parse([(HDR, 16), (BUF, 512), (BUF2, 512)], [(STATUS, 1)])
    assert (request.request_type, request.sector, request.data_len) == (blk.T_OUT, (1 << 64) - 1, 1024)
    assert b"".join(bytes(view) for view in request.data) == b"w" * 512 + b"x" * 512
    assert_status_is(ring, request.status, STATUS)


@pytest.mark.parametrize("rtype", [blk.T_DISCARD, blk.T_WRITE_ZEROES])
def test_discard_and_write_zeroes_give_the_readable_segments(ring, rtype):
    segments = blk.DISCARD_SEG.pack(8, 8, 0) + blk.DISCARD_SEG.pack(32, 1, blk.WZ_UNMAP)
    ring.mem.write(HDR, header(rtype))
    ring.mem.write(BUF, segments)
    request = ring.parse([(HDR, 16), (BUF, len(segments))], [(STATUS, 1)])
    assert (request.request_type, request.data_len) == (rtype, len(segments))
    assert b"".join(bytes(view) for view in request.data) == segments
    assert_status_is(ring, request.status, STATUS)


@pytest.mark.parametrize("rtype", [blk.T_FLUSH, 77])
def test_flush_and_unknown_types_carry_no_data(ring, rtype):
    ring.mem.write(HDR, header(rtype, 5))
    ring.mem.write(BUF, b"p" * 512)
    request = ring.parse([(HDR, 16), (BUF, 512)], [(BUF2, 512), (STATUS, 1)])
    assert (request.request_type, request.sector, request.data, request.data_len) == (rtype, 5, [], 0)
    assert_status_is(ring, request.status, STATUS)


# -- shapes that are legal ---------------------------------------------------------------------------------
def test_header_split_across_buffers(ring):
    raw = header(blk.T_IN, 0x0102030405060708)
    ring.mem.write(HDR, raw[:5])
    ring.mem.write(HDR + 100, raw[5:])
    request = ring.parse([(HDR, 5), (HDR + 100, 11)], [(BUF, 512), (STATUS, 1)])
    assert (request.request_type, request.sector, request.data_len) == (blk.T_IN, 0x0102030405060708, 512)


def test_header_and_payload_in_one_buffer(ring):
    ring.mem.write(HDR, header(blk.T_OUT, 3) + b"d" * 512)
    request = ring.parse([(HDR, 16 + 512)], [(STATUS, 1)])
    assert (request.request_type, request.sector, request.data_len) == (blk.T_OUT, 3, 512)
    assert [bytes(view) for view in request.data] == [b"d" * 512]


def test_status_byte_at_the_end_of_a_data_buffer(ring):
    ring.mem.write(HDR, header(blk.T_IN))
    request = ring.parse([(HDR, 16)], [(BUF, 513)])
    assert request.data_len == 512 and [view.nbytes for view in request.data] == [512]
    request.data[0][:] = b"r" * 512
    assert ring.mem.read(BUF, 512) == b"r" * 512
    assert_status_is(ring, request.status, BUF + 512)


def test_data_on_the_other_side_is_not_the_requests(ring):
    ring.mem.write(HDR, header(blk.T_IN))
    read = ring.parse([(HDR, 16), (BUF, 512)], [(BUF2, 1024), (STATUS, 1)])  # readable bytes after a read's header
    assert read.data_len == 1024 and [view.nbytes for view in read.data] == [1024]
    ring.mem.write(HDR, header(blk.T_OUT))
    write = ring.parse([(HDR, 16), (BUF, 512)], [(BUF2, 1024), (STATUS, 1)])  # writable bytes before a write's status
    assert write.data_len == 512 and [view.nbytes for view in write.data] == [512]


# -- malformed shapes: the errors the device turns into its answers ---------------------------------------------
@pytest.mark.parametrize("out", [[(HDR, 16), (BUF, 512), (STATUS, 1)], [(HDR, 8)]],
                         ids=["status-readable", "short-header-too"])
def test_no_writable_byte_is_no_status_byte(ring, out):
    ring.mem.write(HDR, header(blk.T_OUT))
    with pytest.raises(NoStatusByte) as info:
        ring.parse(out, [])
    assert isinstance(info.value, RequestError) and "status byte" in str(info.value)


@pytest.mark.parametrize("out, length", [([(HDR, 8)], 8), ([], 0), ([(HDR, 7), (HDR + 100, 8)], 15)],
                         ids=["8-bytes", "status-only", "15-bytes-in-two"])
def test_short_header_keeps_the_status_byte(ring, out, length):
    ring.mem.write(HDR, header(blk.T_IN))
    with pytest.raises(ShortHeader) as info:
        ring.parse(out, [(BUF, 512), (STATUS, 1)])
    assert isinstance(info.value, RequestError) and info.value.length == length
    assert f"header is {length} bytes, not 16" in str(info.value)
    assert_status_is(ring, info.value.status, STATUS)
