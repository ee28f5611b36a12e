"""virtio-blk device model, in process: requests through real rings on both twins, malformed ones included."""

from __future__ import annotations

import os
import struct

import pytest

from vring import Feature
from vring.device import ConfigError, DEVICE_NEEDS_RESET
from vring.devices import blk
from vring.devices.blk import BlkDevice, S_IOERR, S_OK, S_UNSUPP
from vring.devices.rng import RngDevice

from vring.testing import DATA, make_pair

HDR, BUF, STATUS = DATA, DATA + 0x1000, DATA + 0x7000
SECTORS = 64


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(SECTORS * 512))
    device = BlkDevice(str(path))
    yield device, path
    device.close()


def request(p, device, out, in_, written_expected=None):
    """Add one chain, let the device process the queue, return (written, status byte)."""
    p.drv.add(out, in_, token="r")
    p.drv.kick_needed()
    served, _ = device.process(0, p.dev)
    assert served == 1
    ((token, written),) = p.drv.pop_used()
    return written


def header(rtype, sector=0):
    return struct.pack("<IIQ", rtype, 0, sector)


def test_read_write_flush_get_id(twin, disk):
    device, path = disk
    p = make_pair(twin, features=Feature.INDIRECT_DESC)
    image = path.read_bytes()
    p.mem.write(HDR, header(blk.T_IN, 3))
    assert request(p, device, [(HDR, 16)], [(BUF, 1024), (STATUS, 1)]) == 1025
    assert p.mem.read(BUF, 1024) == image[3 * 512:5 * 512] and p.mem.read(STATUS, 1)[0] == S_OK
    p.mem.write(HDR, header(blk.T_OUT, 10))
    p.mem.write(BUF, b"w" * 512)
    assert request(p, device, [(HDR, 16), (BUF, 512)], [(STATUS, 1)]) == 1
    assert path.read_bytes()[10 * 512:11 * 512] == b"w" * 512
    p.mem.write(HDR, header(blk.T_FLUSH))
    assert request(p, device, [(HDR, 16)], [(STATUS, 1)]) == 1
    p.mem.write(HDR, header(blk.T_GET_ID))
    assert request(p, device, [(HDR, 16)], [(BUF, 20), (STATUS, 1)]) == 21
    assert p.mem.read(BUF, 20).rstrip(b"\0") == b"disk.img"


def test_header_and_data_split_across_buffers(twin, disk):
    device, path = disk
    p = make_pair(twin)
    p.mem.write(HDR, header(blk.T_IN, 1)[:5])
    p.mem.write(HDR + 100, header(blk.T_IN, 1)[5:])
    written = request(p, device, [(HDR, 5), (HDR + 100, 11)], [(BUF, 100), (BUF + 200, 412), (STATUS, 1)])
    assert written == 513
    assert p.mem.read(BUF, 100) + p.mem.read(BUF + 200, 412) == path.read_bytes()[512:1024]


@pytest.mark.parametrize("case", ["short-header", "not-512", "past-the-end", "sector-overflow", "unknown-type",
                                  "no-status", "status-only", "readonly-status"])
def test_malformed_requests_complete_with_a_status(twin, disk, case):
    device, path = disk
    p = make_pair(twin)
    before = path.read_bytes()
    if case == "short-header":
        p.mem.write(HDR, header(blk.T_IN))
        written = request(p, device, [(HDR, 8)], [(STATUS, 1)])
        assert (written, p.mem.read(STATUS, 1)[0]) == (1, S_IOERR)
    elif case == "not-512":
        p.mem.write(HDR, header(blk.T_OUT, 0))
        written = request(p, device, [(HDR, 16), (BUF, 100)], [(STATUS, 1)])
        assert (written, p.mem.read(STATUS, 1)[0]) == (1, S_IOERR)
    elif case == "past-the-end":
        p.mem.write(HDR, header(blk.T_OUT, SECTORS - 1))
        written = request(p, device, [(HDR, 16), (BUF, 1024)], [(STATUS, 1)])
        assert (written, p.mem.read(STATUS, 1)[0]) == (1, S_IOERR)
    elif case == "sector-overflow":
        p.mem.write(HDR, header(blk.T_IN, (1 << 64) - 1))
        written = request(p, device, [(HDR, 16)], [(BUF, 512), (STATUS, 1)])
        assert (written, p.mem.read(STATUS, 1)[0]) == (1, S_IOERR)
    elif case == "unknown-type":
        p.mem.write(HDR, header(77))
        written = request(p, device, [(HDR, 16)], [(STATUS, 1)])
        assert (written, p.mem.read(STATUS, 1)[0]) == (1, S_UNSUPP)
    elif case == "no-status":
        p.mem.write(HDR, header(blk.T_OUT, 0))
        assert request(p, device, [(HDR, 16), (BUF, 512)], []) == 0  # nowhere to write a status: nothing written
    elif case == "status-only":
        assert request(p, device, [], [(STATUS, 1)]) == 1
        assert p.mem.read(STATUS, 1)[0] == S_IOERR
    elif case == "readonly-status":
        p.mem.write(HDR, header(blk.T_OUT, 0))
        assert request(p, device, [(HDR, 16), (BUF, 512), (STATUS, 1)], []) == 0
    assert path.read_bytes() == before  # nothing was written to the image
    assert not p.dev.broken and not device.status & DEVICE_NEEDS_RESET


def test_discard_and_write_zeroes(twin, disk):
    device, path = disk
    p = make_pair(twin)
    p.mem.write(HDR, header(blk.T_WRITE_ZEROES))
    p.mem.write(BUF, struct.pack("<QII", 8, 8, 0) + struct.pack("<QII", 32, 1, blk.WZ_UNMAP))
    assert request(p, device, [(HDR, 16), (BUF, 32)], [(STATUS, 1)]) == 1
    assert p.mem.read(STATUS, 1)[0] == S_OK
    image = path.read_bytes()
    assert image[8 * 512:16 * 512] == bytes(8 * 512) and image[32 * 512:33 * 512] == bytes(512)
    p.mem.write(HDR, header(blk.T_DISCARD))
    p.mem.write(BUF, struct.pack("<QII", 0, 4, 0))
    assert request(p, device, [(HDR, 16), (BUF, 16)], [(STATUS, 1)]) == 1
    assert p.mem.read(STATUS, 1)[0] == S_OK
    for payload, status in [(struct.pack("<QII", SECTORS - 1, 2, 0), S_IOERR),  # past the end
                            (b"\0" * 15, S_IOERR),  # not a whole segment
                            (struct.pack("<QII", 0, 1, 1), S_UNSUPP)]:  # unmap flag on a discard
        p.mem.write(BUF, payload)
        assert request(p, device, [(HDR, 16), (BUF, len(payload))], [(STATUS, 1)]) == 1
        assert p.mem.read(STATUS, 1)[0] == status


def test_read_only_device(twin, tmp_path):
    path = tmp_path / "ro.img"
    path.write_bytes(b"r" * 4096)
    device = BlkDevice(str(path), read_only=True)
    assert device.device_features & blk.F_RO
    p = make_pair(twin)
    for rtype in (blk.T_OUT, blk.T_WRITE_ZEROES, blk.T_DISCARD):
        p.mem.write(HDR, header(rtype))
        p.mem.write(BUF, struct.pack("<QII", 0, 1, 0) + bytes(496))
        request(p, device, [(HDR, 16), (BUF, 512 if rtype == blk.T_OUT else 16)], [(STATUS, 1)])
        assert p.mem.read(STATUS, 1)[0] == S_IOERR
    assert path.read_bytes() == b"r" * 4096
    device.close()


def test_config_space(disk):
    device, _ = disk
    assert device.read_config(0, 8) == struct.pack("<Q", SECTORS)
    assert device.read_config(2, 3) == struct.pack("<Q", SECTORS)[2:5]  # a partial read of a field
    assert device.read_config(34, 2) == struct.pack("<H", 1)  # num_queues
    with pytest.raises(ConfigError):
        device.read_config(58, 8)
    with pytest.raises(ConfigError):
        device.write_config(0, b"\0" * 8)
    device.write_config(32, b"\0")
    assert device.read_config(32, 1) == b"\0" and device.writeback == 0


def test_broken_queue_marks_the_device(twin, disk):
    device, _ = disk
    p = make_pair(twin)
    p.make_available(99)
    with pytest.raises(Exception):
        device.process(0, p.dev)
    assert device.status & DEVICE_NEEDS_RESET and p.dev.broken


def test_rng_fills_the_buffers(twin):
    p = make_pair(twin)
    device = RngDevice()
    assert request(p, device, [], [(BUF, 32), (BUF + 64, 32)]) == 64
    assert p.mem.read(BUF, 32) != bytes(32)
