"""virtio-blk over vhost-user, driven by vring's front-end and BlkClient, against vring's own back-end and
against qemu-storage-daemon: the same requests, the same answers, data checked against the image file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vring import Feature
from vring.devices.blk import S_IOERR
from vring.drivers.blk import BlkClient, BlkError
from vring.vhost_user.frontend import Frontend

from support.backends import BACKENDS

IMAGE_BYTES = 4 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(IMAGE_BYTES))
    return path


def connect(backend: str, image: Path, tmp_path: Path, *, queues: int = 1, read_only: bool = False,
            event_idx: bool = True, indirect: bool = True, packed: bool = False):
    sock = tmp_path / f"{backend}.sock"
    ctx = BACKENDS[backend](image, sock, queues=queues, read_only=read_only)
    ctx.__enter__()
    frontend = Frontend(str(sock)).connect()
    client = BlkClient(frontend, queues=queues, event_idx=event_idx, indirect=indirect, packed=packed)
    if packed and backend == "vring":
        assert client.features & Feature.RING_PACKED
    return ctx, frontend, client


@pytest.fixture
def session(request, image, tmp_path):
    backend, queues, event_idx, indirect, packed = request.param
    ctx, frontend, client = connect(backend, image, tmp_path, queues=queues, event_idx=event_idx,
                                    indirect=indirect, packed=packed)
    yield client, image
    frontend.close()
    ctx.__exit__(None, None, None)


SESSIONS = [pytest.param((b, q, e, i, False), id=f"{b}-{q}q-{'evidx' if e else 'noevidx'}-{'ind' if i else 'noind'}")
            for b in ("vring", "qsd") for q in (1, 2) for e in (True, False) for i in (True, False)
            if q == 1 or (e and i)]
# Packed rings: vring's back-end offers them; qemu-storage-daemon (libvhost-user) does not, so there the client
# falls back to split rings and must still work.
SESSIONS += [pytest.param(("vring", q, e, i, True), id=f"vring-{q}q-packed-{'evidx' if e else 'noevidx'}-"
                                                       f"{'ind' if i else 'noind'}")
             for q in (1, 2) for e in (True, False) for i in (True, False) if q == 1 or (e and i)]
SESSIONS += [pytest.param(("qsd", 1, True, True, True), id="qsd-1q-packed-offered-falls-back-to-split")]


@pytest.mark.parametrize("session", SESSIONS, indirect=True)
def test_blk_requests_against_the_image(session):
    client, image = session
    data = image.read_bytes()
    assert client.capacity == IMAGE_BYTES // 512
    assert client.read(0, 8) == data[:4096]
    assert client.read(client.capacity - 1, 1) == data[-512:]
    pattern = bytes(range(256)) * 8
    client.write(100, pattern)
    client.flush()
    assert image.read_bytes()[100 * 512:100 * 512 + 2048] == pattern
    assert client.read(100, 4) == pattern
    assert client.get_id()  # a serial of up to 20 bytes
    client.write_zeroes(200, 16)
    assert image.read_bytes()[200 * 512:216 * 512] == bytes(16 * 512)
    client.discard(300, 8)  # contents afterwards are undefined; the request must succeed
    with pytest.raises(BlkError) as info:
        client.read(client.capacity, 1)
    assert info.value.status == S_IOERR
    with pytest.raises(BlkError):
        client.write(client.capacity - 1, bytes(1024))  # runs past the end


@pytest.mark.parametrize("session", SESSIONS, indirect=True)
def test_64_requests_in_flight(session):
    client, image = session
    writes = [("write", 1000 + 8 * k, os.urandom(4096)) for k in range(64)]
    assert client.run(writes, depth=64) == [None] * 64
    current = image.read_bytes()
    for _, sector, payload in writes:
        assert current[sector * 512:sector * 512 + 4096] == payload
    reads = [("read", 1000 + 8 * k, 8) for k in range(64)]
    assert client.run(reads, depth=64) == [payload for _, _, payload in writes]


@pytest.mark.parametrize("backend", ["vring", "qsd"])
def test_read_only_export_refuses_writes(backend, image, tmp_path):
    ctx, frontend, client = connect(backend, image, tmp_path, read_only=True)
    try:
        assert client.read_only
        before = image.read_bytes()
        assert client.read(1, 1) == before[512:1024]
        with pytest.raises(BlkError):
            client.write(1, bytes(512))
        assert image.read_bytes() == before
    finally:
        frontend.close()
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("backend", ["vring", "qsd"])
def test_reconnect_after_disconnect(backend, image, tmp_path):
    ctx, frontend, client = connect(backend, image, tmp_path)
    try:
        client.write(5, b"A" * 512)
        assert frontend.stop_queue(0) == 1 + 0  # one request went through queue 0
        frontend.close()
        again = Frontend(frontend.path).connect()
        second = BlkClient(again, queues=1)
        assert second.read(5, 1) == b"A" * 512
        again.close()
    finally:
        ctx.__exit__(None, None, None)
