"""The fast block client: BlkClient.stream (the C core's request loop, and its pure-Python reference), the C floor
client in bench/c, and `vring blk bench` on top of both. Every read is checked against the per-sector pattern and
every status byte is checked: a corrupted sector or a failed request fails the run, naming the sector."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import vring
from vring.drivers import blk_cfloor, blk_stream
from vring.drivers.blk import BlkClient
from vring.drivers.blk_pattern import SECTOR, fill_image, first_difference, pattern
from vring.drivers.blk_stream import StreamError
from vring.vhost_user.frontend import Frontend

from support.backends import BACKENDS, vring_blk
from support.cli_run import assert_one_line, vring_cli
from support.source import source_file

SECTORS = 8192  # a 4 MiB image
SEED = 7
C_SOURCE = "bench/c/vhost_user_blk_client.c"


@pytest.fixture(scope="module")
def c_floor(tmp_path_factory) -> Path:
    return blk_cfloor.build(source_file(C_SOURCE), tmp_path_factory.mktemp("c-floor"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(SECTORS * SECTOR))
    fill_image(path, SEED)
    return path


def corrupt(image: Path, sector: int, offset: int) -> None:
    with open(image, "r+b") as f:
        f.seek(sector * SECTOR + offset)
        byte = f.read(1)[0]
        f.seek(sector * SECTOR + offset)
        f.write(bytes([byte ^ 0x40]))


@contextlib.contextmanager
def client_of(image: Path, tmp_path: Path, *, backend: str = "vring", queues: int = 1,
              **options: bool) -> Iterator[BlkClient]:
    sock = tmp_path / f"{backend}.sock"
    with BACKENDS[backend](image, sock, queues=queues):
        frontend = Frontend(str(sock), timeout=10).connect()
        try:
            yield BlkClient(frontend, queues=queues, **options)
        finally:
            frontend.close()


@pytest.fixture(params=["c", "python"])
def loop(request, monkeypatch) -> str:
    """Each test runs on the C core's loop and on the pure-Python reference loop (an engine without blk_stream)."""
    if request.param == "python":
        monkeypatch.setattr(blk_stream, "ENGINE", vring._pyring)
    return request.param


def test_the_pattern_names_its_sector_and_seed():
    data = pattern(SEED, 1000, 2)
    assert len(data) == 2 * SECTOR
    assert int.from_bytes(data[:8], "little") == 1000 and int.from_bytes(data[8:16], "little") == SEED
    assert int.from_bytes(data[SECTOR:SECTOR + 8], "little") == 1001
    assert first_difference(data, SEED, 1000) is None
    assert first_difference(data, SEED + 1, 1000) == (1000, 8)
    assert first_difference(data[:700] + b"\0" + data[701:], SEED, 1000) == (1001, 700 - SECTOR)


@pytest.mark.parametrize("workload", ["randread", "seqread"])
def test_reads_are_verified_and_timed(image, tmp_path, loop, workload):
    with client_of(image, tmp_path) as client:
        result = client.stream(workload, depth=8, requests=300, seed=SEED)
        assert result.requests == 300 and result.verified
        assert len(result.latencies_ns) == 300 and (result.latencies_ns > 0).all()
        assert result.peak_in_flight == [8]
        assert result.iops > 0 and 0 < result.percentile_us(50) <= result.percentile_us(99)
        assert client.read(16, 1) == pattern(SEED, 16, 1)  # the per-request API still works afterwards


@pytest.mark.parametrize("options", [{"packed": True}, {"event_idx": False}, {"indirect": False}],
                         ids=["packed", "no-event-idx", "no-indirect"])
def test_every_ring_kind(image, tmp_path, loop, options):
    with client_of(image, tmp_path, queues=2, **options) as client:
        assert bool(client.features & vring.Feature.RING_PACKED) == bool(options.get("packed"))
        result = client.stream("randread", depth=16, requests=300, seed=SEED)
        assert result.requests == 600 and result.peak_in_flight == [16, 16]
        client.stream("randwrite", depth=16, requests=100, first=0, count=512, seed=SEED)
        assert client.read(0, 512) == pattern(SEED, 0, 512)


@pytest.mark.parametrize("depth", [1, 5, 32])
def test_depth_is_honoured(image, tmp_path, depth):
    with client_of(image, tmp_path) as client:
        assert client.stream("randread", depth=depth, requests=200, seed=SEED).peak_in_flight == [depth]


def test_a_depth_the_queue_cannot_hold_is_refused(image, tmp_path):
    with client_of(image, tmp_path, indirect=False) as client:  # 3 descriptors a request in a 128-entry ring
        with pytest.raises(ValueError, match="depth 43 does not fit a queue of 128 descriptors"):
            client.stream("randread", depth=43, requests=10)
        assert client.stream("randread", depth=42, requests=100, seed=SEED).peak_in_flight == [42]


def test_two_queues_run_on_two_threads(image, tmp_path, loop):
    with client_of(image, tmp_path, queues=2) as client:
        result = client.stream("randread", depth=16, requests=400, seed=SEED)
        assert result.queues == 2 and result.requests == 800 and result.peak_in_flight == [16, 16]
        timed = client.stream("seqread", depth=4, seconds=0.3, seed=SEED)
        assert timed.requests > 0 and 0.25 < timed.seconds < 3


def test_a_corrupted_sector_fails_the_run(image, tmp_path, loop):
    corrupt(image, 4099, 300)
    with client_of(image, tmp_path) as client:
        with pytest.raises(StreamError, match="sector 4099 byte 300 reads .*the data is wrong") as info:
            client.stream("seqread", depth=8, requests=SECTORS // 8, seed=SEED)
        assert info.value.sector == 4099
        with pytest.raises(StreamError, match=r"sector 0 byte 8 reads 0x07, the pattern \(seed 8\) has 0x08"):
            client.stream("seqread", depth=1, requests=1, seed=SEED + 1)
        # A failed run drains what it had in flight: the queue goes on working.
        assert client.stream("seqread", depth=8, requests=100, seed=SEED).requests == 100


def test_a_non_ok_status_fails_the_run(image, tmp_path, loop):
    with client_of(image, tmp_path) as client:
        client.config.capacity = SECTORS + 64  # a config that claims more than the disk: the device says IOERR
        # Any of the first 4 requests (all past the end, in flight at once) may complete first: out of order.
        with pytest.raises(StreamError, match="the request at sector (8192|8200|8208|8216) completed with "
                                              "VIRTIO_BLK_S_IOERR"):
            client.stream("seqread", depth=4, requests=50, first=SECTORS, count=64, seed=SEED)


def test_writes_write_the_pattern(tmp_path, loop):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(SECTORS * SECTOR))
    with client_of(image, tmp_path, queues=2) as client:
        result = client.stream("randwrite", depth=8, requests=400, first=1024, count=128, seed=SEED)
        assert result.requests == 800 and not result.verified
        client.stream("randread", depth=8, requests=100, first=1024, count=128, seed=SEED)
    data = image.read_bytes()
    assert data[1024 * SECTOR:1152 * SECTOR] == pattern(SEED, 1024, 128)  # every block, by chance of 800 writes
    assert data[:1024 * SECTOR] == bytes(1024 * SECTOR) and data[1152 * SECTOR:] == bytes((SECTORS - 1152) * SECTOR)


def test_bad_arguments(image, tmp_path):
    with client_of(image, tmp_path) as client:
        for kwargs, message in [({"requests": 10, "seconds": 1}, "give seconds or requests"),
                                ({"requests": 10, "block": 1000}, "multiple of 512, not 1000"),
                                ({"requests": 10, "first": SECTORS - 4}, "hold no 4096-byte block"),
                                ({"requests": 10, "depth": 0}, "depth 0 does not fit")]:
            with pytest.raises(ValueError, match=message):
                client.stream("randread", **kwargs)
        with pytest.raises(ValueError, match="unknown workload 'randfoo'"):
            client.stream("randfoo", requests=1)


def test_qemu_storage_daemon_reads_verify_too(image, tmp_path):
    with client_of(image, tmp_path, backend="qsd", queues=2) as client:
        assert client.stream("randread", depth=32, requests=500, seed=SEED).requests == 1000


# -- the C floor client ----------------------------------------------------------------------------------------
def test_the_c_floor_client_builds_and_reports_verified_iops(image, tmp_path):
    binary = blk_cfloor.build(source_file(C_SOURCE), tmp_path / "build")
    assert blk_cfloor.build(source_file(C_SOURCE), tmp_path / "build") == binary  # built once
    sock = tmp_path / "c.sock"
    with vring_blk(image, sock, queues=2):
        figures = blk_cfloor.run(str(sock), "randread", queues=2, depth=32, seconds=1, seed=SEED, binary=binary)
        assert figures["errors"] == 0 and figures["verified"] and figures["requests"] > 0 and figures["iops"] > 0
        assert 0 < figures["lat_us_p50"] <= figures["lat_us_p99"] and figures["queues"] == 2
        write = blk_cfloor.run(str(sock), "randwrite", depth=4, requests=200, first=64, count=64, seed=SEED + 1,
                               binary=binary)
        assert write["requests"] == 200 and not write["verified"]
    assert image.read_bytes()[64 * SECTOR:128 * SECTOR] == pattern(SEED + 1, 64, 64)


def test_the_c_floor_client_fails_on_a_corrupted_sector_and_a_failed_request(image, tmp_path, c_floor):
    corrupt(image, 77, 5)
    sock = tmp_path / "c.sock"
    with vring_blk(image, sock):
        with pytest.raises(blk_cfloor.CFloorError, match="sector 77: word 0 reads"):
            blk_cfloor.run(str(sock), "seqread", depth=8, requests=SECTORS // 8, seed=SEED, binary=c_floor)
        with pytest.raises(blk_cfloor.CFloorError, match="no whole block in the range"):
            blk_cfloor.run(str(sock), "randread", depth=8, requests=8, first=SECTORS - 4, count=4, binary=c_floor)


# -- vring blk bench ------------------------------------------------------------------------------------------
def test_bench_checks_the_pattern_and_compares_with_the_c_floor(image, tmp_path):
    sock = tmp_path / "s.sock"
    out = tmp_path / "bench.json"
    with vring_blk(image, sock, queues=2):
        done = vring_cli("blk", "--socket", str(sock), "--queues", "2", "bench", "--seconds", "0.3", "--pattern",
                         str(SEED), "--scratch", "1024:256", "--compare-c-floor", "--c-floor-source",
                         str(source_file(C_SOURCE)), "--json", str(out))
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert f"every read checked against the pattern of seed {SEED}" in text
    assert "randread: vring's client does" in text and "x the C floor client's IOPS" in text
    report = json.loads(out.read_text())
    clients = [(r["client"], r["workload"]) for r in report["results"]]
    assert clients == [(c, w) for c in ("vring", "c-floor") for w in ("randread", "seqread", "randwrite")]
    assert all(r["requests"] > 0 and r["queues"] == 2 for r in report["results"])
    assert set(report["vring_vs_c_floor"]) == {"randread", "seqread", "randwrite"}
    assert first_difference(image.read_bytes(), SEED, 0) is None  # randwrite wrote the pattern it found


def test_compare_c_floor_without_its_source_is_one_line(tmp_path):
    done = vring_cli("blk", "--socket", str(tmp_path / "none"), "bench", "--compare-c-floor", "--c-floor-source",
                     str(tmp_path / "missing.c"))
    assert_one_line(done, 1, f"no C floor client source at {tmp_path / 'missing.c'}")


def test_bench_fails_on_a_corrupted_sector(image, tmp_path):
    corrupt(image, 2050, 0)
    sock = tmp_path / "s.sock"
    with vring_blk(image, sock):
        done = vring_cli("blk", "--socket", str(sock), "bench", "--workloads", "seqread", "--seconds", "2",
                         "--pattern", str(SEED))
        assert_one_line(done, 1, "seqread on queue 0: sector 2050 byte 0 reads", "the data is wrong")
        assert vring_cli("blk", "--socket", str(sock), "bench", "--workloads", "seqread", "--seconds",
                         "0.2").returncode == 0  # without --pattern only the status bytes are checked


def test_bench_block_size(image, tmp_path):
    sock = tmp_path / "s.sock"
    with vring_blk(image, sock):
        done = vring_cli("blk", "--socket", str(sock), "bench", "--workloads", "randread", "--seconds", "0.2",
                         "--block-size", "16384", "--pattern", str(SEED), "--json", "-")
        assert done.returncode == 0, done.stderr
        text = done.stdout.decode()
        assert json.loads(text[text.index("{"):])["results"][0]["block"] == 16384
        assert_one_line(vring_cli("blk", "--socket", str(sock), "bench", "--block-size", "1000"), 2,
                        "1000 is not a multiple of 512")


def test_latencies_are_per_request(image, tmp_path):
    with client_of(image, tmp_path) as client:
        result = client.stream("randread", depth=1, requests=50, seed=SEED)
    assert result.latencies_ns.dtype == np.int64 and len(result.latencies_ns) == 50
    # depth 1: the requests ran one after another, so their latencies add up to at most the run's length
    assert result.latencies_ns.sum() <= result.seconds * 1e9


# -- a device that breaks the rules or never answers: straight on the loop, over an in-process ring -------------
@pytest.fixture(params=["c", "python"])
def twin_loop(request):
    """(engine twin, the loop to drive): the C core's blk_stream, or the reference loop on the pure-Python twin."""
    if request.param == "c":
        return vring._cring, vring._cring.blk_stream
    return vring._pyring, blk_stream._python_stream


def bare_ring(twin):
    """A driver queue of 16 entries, its guest memory and a slot area for 4 requests; nobody serves it."""
    import os

    mem = twin.GuestMemory()
    mem.add_region(0x10000, bytearray(1 << 20))
    features = vring.Feature.VERSION_1 | vring.Feature.EVENT_IDX
    layout = vring.contiguous_layout(features, 16, 0x10000)
    driver = vring.create_driver_queue(mem, layout, features, twin=twin)
    kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    return mem, layout, driver, kick, call, 0x80000


def test_a_device_that_never_answers_times_out(twin_loop):
    twin, loop = twin_loop
    _mem, _layout, driver, kick, call, area = bare_ring(twin)
    latencies = np.zeros(8, np.int64)
    result = loop(driver, area, kick, call, np.arange(8, dtype=np.uint64) * 8, latencies, False, 0, 4096, 4, True,
                  0.2)
    assert result[:3] == (blk_stream.TIMEOUT, 0, 4)  # timed out, nothing done, four in flight


def test_a_used_id_out_of_range_breaks_the_queue(twin_loop):
    import struct
    import threading

    twin, loop = twin_loop
    mem, layout, driver, kick, call, area = bare_ring(twin)

    def hostile() -> None:  # on the first kick: a used element naming descriptor 99 of a 16-entry ring
        import select
        import os

        select.select([kick], [], [], 5)
        mem.write(layout.device_area + 4, struct.pack("<II", 99, 1))
        mem.write(layout.device_area + 2, struct.pack("<H", 1))
        os.eventfd_write(call, 1)

    thread = threading.Thread(target=hostile)
    thread.start()
    with pytest.raises(vring.MalformedUsed, match="99"):
        loop(driver, area, kick, call, np.zeros(4, np.uint64), np.zeros(4, np.int64), False, 0, 4096, 2, True, 5.0)
    thread.join()
    assert driver.broken
