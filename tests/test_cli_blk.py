"""`vring blk`: verify and bench never write outside a range the user names; bad input and failures are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from support.backends import qsd_blk, vring_blk
from support.cli_run import assert_one_line, vring_cli, vring_popen

SECTORS = 2048  # a 1 MiB image


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(SECTORS * 512))
    return path


@pytest.fixture
def served(image, tmp_path):
    sock = tmp_path / "s.sock"
    with vring_blk(image, sock, queues=2):
        yield image, str(sock)


def blk(sock: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return vring_cli("blk", "--socket", sock, *args, **kwargs)


def test_verify_reads_only_by_default(served):
    image, sock = served
    before = image.read_bytes()
    done = blk(sock, "--queues", "2", "verify")
    assert done.returncode == 0, done.stderr
    assert b"256 blocks read twice, identical (read only" in done.stdout
    assert image.read_bytes() == before


def test_verify_writes_only_its_scratch_range(served):
    image, sock = served
    before = image.read_bytes()
    done = blk(sock, "verify", "--scratch", "100:20")
    assert done.returncode == 0, done.stderr
    assert b"3 blocks written and read back intact (sectors 100 to 119)" in done.stdout
    after = image.read_bytes()
    assert after[:100 * 512] == before[:100 * 512] and after[120 * 512:] == before[120 * 512:]
    assert after[100 * 512:120 * 512] != before[100 * 512:120 * 512]


def test_verify_past_the_end_reports_io_errors(served):
    image, sock = served
    done = blk(sock, "verify", "--scratch", f"{SECTORS - 16}:64")
    assert_one_line(done, 1, "verify: 6 of 8 blocks failed to write", "VIRTIO_BLK_S_IOERR",
                    f"first at sector {SECTORS}")
    done = blk(sock, "verify", "--sector", str(SECTORS - 8), "--count", "16")
    assert_one_line(done, 1, "verify: 1 of 2 blocks failed to read", "VIRTIO_BLK_S_IOERR")


def test_bench_reads_only_by_default(served):
    image, sock = served
    before = image.read_bytes()
    done = blk(sock, "bench", "--seconds", "0.2", "--json", "-")
    assert done.returncode == 0, done.stderr
    workloads = [r["workload"] for r in json.loads(done.stdout[done.stdout.index(b"{"):])["results"]]
    assert workloads == ["randread", "seqread"]
    assert image.read_bytes() == before


def test_bench_writes_only_its_scratch_range(served, tmp_path):
    image, sock = served
    before = image.read_bytes()
    out = tmp_path / "bench.json"
    done = blk(sock, "bench", "--seconds", "0.2", "--scratch", "512:64", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert [r["workload"] for r in json.loads(out.read_text())["results"]] == ["randread", "seqread", "randwrite"]
    after = image.read_bytes()
    assert after[:512 * 512] == before[:512 * 512] and after[576 * 512:] == before[576 * 512:]
    assert after != before


def test_bench_write_workloads_need_a_scratch_range(served):
    image, sock = served
    assert_one_line(blk(sock, "bench", "--workloads", "randwrite"), 2, "randwrite writes", "--scratch START:COUNT")
    assert_one_line(blk(sock, "bench", "--workloads", "randfoo"), 2, "unknown workload 'randfoo'")
    assert_one_line(blk(sock, "bench", "--scratch", "0:4"), 2, "--scratch needs at least 8 sectors")


def test_writing_a_read_only_disk_is_refused(image, tmp_path):
    sock = str(tmp_path / "ro.sock")
    before = image.read_bytes()
    with vring_blk(image, tmp_path / "ro.sock", read_only=True):
        assert_one_line(blk(sock, "verify", "--scratch", "0:8"), 1, "the disk is read-only")
        assert_one_line(blk(sock, "bench", "--scratch", "0:8"), 1, "the disk is read-only")
        assert blk(sock, "verify").returncode == 0
    assert image.read_bytes() == before


@pytest.mark.parametrize("args,fragment", [
    (("--queues", "0", "info"), "--queues: 0 is out of range"),
    (("--queues", "-1", "info"), "--queues: -1 is out of range"),
    (("--queue-size", "100", "info"), "100 is not a power of two"),
    (("--timeout", "0", "info"), "--timeout: 0 must be a number above 0"),
    (("read", "--sector", "-5", "--count", "1"), "--sector: -5 is out of range"),
    (("read", "--sector", "0", "--count", "0"), "--count: 0 is out of range"),
    (("bench", "--depth", "0"), "--depth: 0 is out of range"),
    (("bench", "--seconds", "-1"), "--seconds: -1 must be a number above 0"),
    (("verify", "--scratch", "12"), "'12' is not START:COUNT"),
    (("verify", "--scratch=-1:8"), "-1 is out of range"),
])
def test_bad_arguments_are_usage_errors(tmp_path, args, fragment):
    # refused before any connection: no back-end is needed
    assert_one_line(vring_cli("blk", "--socket", str(tmp_path / "none"), *args), 2, fragment, "--help")


def test_bad_files_are_refused_before_connecting(tmp_path):
    sock = str(tmp_path / "none")  # nothing listens: the file is checked first
    assert_one_line(blk(sock, "write", "--sector", "0", "--input", "/nonexistent"), 1,
                    "cannot read /nonexistent: No such file or directory")
    assert_one_line(blk(sock, "read", "--sector", "0", "--count", "1", "--output", "/nonexistent/x"), 1,
                    "cannot write /nonexistent/x: no directory /nonexistent")
    assert_one_line(blk(sock, "bench", "--json", "/nonexistent/x.json"), 1,
                    "cannot write /nonexistent/x.json: no directory /nonexistent")
    assert_one_line(blk(sock, "bench", "--json", str(tmp_path)), 1, "is a directory")
    assert_one_line(blk(sock, "write", "--sector", "0", stdin=b""), 2, "0 bytes is not a multiple of 512")


def test_more_queues_than_the_back_end_has(served):
    _, sock = served
    assert_one_line(blk(sock, "--queues", "1000", "info"), 1, "1000 queues asked for, the back-end has 2")


def test_a_back_end_of_another_device_is_refused(tmp_path):
    sock = tmp_path / "rng.sock"
    with vring_blk(tmp_path / "unused", sock, device="rng"):
        assert_one_line(blk(str(sock), "info"), 1, "not a block device")


def test_packed_without_packed_rings_is_an_error(image, tmp_path):
    sock = tmp_path / "qsd.sock"
    with qsd_blk(image, sock):  # libvhost-user offers no packed rings
        assert_one_line(blk(str(sock), "--packed", "info"), 1, "does not offer packed rings")
        assert blk(str(sock), "info").returncode == 0


def test_a_closed_stdout_ends_quietly(served):
    _, sock = served
    proc = vring_popen("blk", "--socket", sock, "read", "--sector", "0", "--count", str(SECTORS),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(100)) == 100  # `| head -c 100`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 1
    assert err == ""


def test_ctrl_c_in_bench_prints_the_workloads_that_finished(served):
    _, sock = served
    proc = vring_popen("blk", "--socket", sock, "bench", "--seconds", "3", "--workloads", "randread,seqread",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4.5)  # connected, randread done (3 s), seqread under way
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "vring blk bench: interrupted after" in err
    assert out.startswith("workload ")
    if "interrupted after 1 of 2" in err:
        assert "randread " in out


def test_info_as_json(served):
    image, sock = served
    done = blk(sock, "--queues", "2", "info", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["config"]["capacity"] == SECTORS and info["config"]["num_queues"] == 2
    assert info["queues_in_use"] == 2 and info["queues_offered"] == 2
    assert "VERSION_1" in info["feature_names"] and info["features"] & (1 << 32)
