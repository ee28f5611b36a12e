"""`vring serve blk`: the image is checked and locked before anything listens; every bad input is one line."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from support.backends import qsd_blk, vring_blk
from support.cli_run import ENV, assert_one_line, vring_cli, vring_popen
from vring.drivers.blk import BlkClient
from vring.vhost_user import Frontend


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(1 << 20))
    return path


def serve(image, sock, *extra: str) -> subprocess.CompletedProcess:
    return vring_cli("serve", "blk", str(image), "--socket", str(sock), *extra, timeout=30)


def test_a_second_writer_on_a_served_image_is_refused(image, tmp_path):
    with vring_blk(image, tmp_path / "a.sock"):
        for extra in ((), ("--read-only",)):
            done = serve(image, tmp_path / "b.sock", *extra)
            assert_one_line(done, 1, f"{image} is in use by another process (locked)")
            assert not (tmp_path / "b.sock").exists()


def test_a_live_socket_is_address_in_use_and_the_first_server_keeps_it(image, tmp_path):
    sock = tmp_path / "a.sock"
    with vring_blk(image, sock, read_only=True):
        inode = sock.stat().st_ino
        done = vring_cli("serve", "rng", "--socket", str(sock), timeout=30)
        assert_one_line(done, 2, f"{sock}: address in use")
        assert sock.stat().st_ino == inode  # neither replaced nor removed


def test_a_file_that_is_not_a_socket_is_neither_replaced_nor_removed(image, tmp_path):
    before = image.read_bytes()
    assert_one_line(vring_cli("serve", "rng", "--socket", str(image), timeout=30), 2, "is not a socket")
    assert image.read_bytes() == before


def test_read_only_servers_share_an_image_and_exclude_a_writer(image, tmp_path):
    with vring_blk(image, tmp_path / "a.sock", read_only=True), vring_blk(image, tmp_path / "b.sock", read_only=True):
        assert_one_line(serve(image, tmp_path / "c.sock"), 1, "in use by another process (locked)")


def test_an_image_qemu_storage_daemon_serves_is_refused(image, tmp_path):
    with qsd_blk(image, tmp_path / "qsd.sock"):
        assert_one_line(serve(image, tmp_path / "b.sock"), 1, "in use by another process (locked)")


def test_connections_share_the_one_open_image(image, tmp_path):
    # Every connection's device uses the server's open (and locked) image: no conflict with its own lock.
    sock = tmp_path / "s.sock"
    with vring_blk(image, sock):
        for _ in range(3):
            done = vring_cli("blk", "--socket", str(sock), "read", "--sector", "1", "--count", "1")
            assert done.returncode == 0, done.stderr
            assert done.stdout == image.read_bytes()[512:1024]


def test_an_image_without_write_bits_needs_read_only(image, tmp_path):
    before = image.read_bytes()
    image.chmod(0o444)
    assert_one_line(serve(image, tmp_path / "s.sock"), 1, f"{image} is read-only (mode 0444)", "--read-only")
    assert not (tmp_path / "s.sock").exists()
    sock = tmp_path / "ro.sock"
    with vring_blk(image, sock, read_only=True):
        done = vring_cli("blk", "--socket", str(sock), "write", "--sector", "0", stdin=bytes(512))
        assert_one_line(done, 1, "read-only")
    assert image.read_bytes() == before


@pytest.mark.parametrize("case,code,fragment", [
    ("missing", 1, "missing.img: no such file"),
    ("directory", 1, "is a directory, not an image"),
    ("empty", 1, "empty.img is empty"),
    ("odd size", 1, "odd.img is 1000 bytes, not a multiple of 512: its last 488 bytes would be invisible"),
    ("fifo", 1, "is not a regular file or a block device"),
])
def test_a_bad_image_is_one_line(tmp_path, case, code, fragment):
    path = {"missing": tmp_path / "missing.img", "directory": tmp_path, "empty": tmp_path / "empty.img",
            "odd size": tmp_path / "odd.img", "fifo": tmp_path / "fifo"}[case]
    if case == "empty":
        path.write_bytes(b"")
    elif case == "odd size":
        path.write_bytes(bytes(1000))
    elif case == "fifo":
        os.mkfifo(path)
    done = serve(path, tmp_path / "s.sock")
    assert_one_line(done, code, fragment)
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("queues", ["0", "1000", "-1", "two"])
def test_queues_out_of_range_is_a_usage_error(image, tmp_path, queues):
    assert_one_line(serve(image, tmp_path / "s.sock", "--queues", queues), 2, "--queues", "see vring serve --help")


def test_usage_errors_of_serve(image, tmp_path):
    assert_one_line(vring_cli("serve", "blk", "--socket", str(tmp_path / "s")), 2, "blk needs an IMAGE")
    assert_one_line(vring_cli("serve", "rng", str(image), "--socket", str(tmp_path / "s")), 2, "rng takes no IMAGE")
    assert_one_line(vring_cli("serve", "blk", str(image)), 2, "--socket")


def test_a_socket_in_a_missing_directory_names_the_path(image, tmp_path):
    sock = tmp_path / "no" / "such" / "s.sock"
    assert_one_line(serve(image, sock), 1, f"cannot listen on {sock}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_stops_the_server_cleanly(image, tmp_path, signum):
    sock = tmp_path / "s.sock"
    proc = vring_popen("serve", "blk", str(image), "--socket", str(sock), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not sock.exists()
    # the lock went with the server: another one may serve the image now
    with vring_blk(image, tmp_path / "again.sock"):
        pass


# -- what a supervisor and a QEMU under another user need -------------------------------------------------------
def test_socket_mode_and_group_are_set_before_anyone_connects(image, tmp_path):
    sock = tmp_path / "blk.sock"
    group = 4242 if os.geteuid() == 0 else os.getgid()  # root may give the socket to any group
    with vring_blk(image, sock, extra=("--socket-mode", "0660", "--socket-group", str(group))):
        st = sock.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group
        with Frontend(str(sock)) as front:
            front.connect()
            assert BlkClient(front, queue_size=16).read(3, 1) == image.read_bytes()[3 * 512:4 * 512]
            os.close(front.memfd)


def test_a_listening_socket_from_a_supervisor_is_served_and_left_in_place(image, tmp_path):
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    env = dict(ENV, NOTIFY_SOCKET=str(tmp_path / "notify"))
    proc = subprocess.Popen([sys.executable, "-m", "vring", "serve", "blk", str(image), "--socket-fd",
                             str(listener.fileno())], pass_fds=[listener.fileno()], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = notify.recv(4096).decode()  # sd_notify: sent once the socket is served
        assert "READY=1" in ready.split("\n") and f"MAINPID={proc.pid}" in ready
        with Frontend(str(path)) as front:
            front.connect()
            assert BlkClient(front, queue_size=16).read(9, 1) == image.read_bytes()[9 * 512:10 * 512]
            os.close(front.memfd)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        listener.close()
        notify.close()
    assert proc.returncode == 0, proc.stderr.read()
    assert path.exists()  # the supervisor's socket: not ours to remove


def test_socket_options_that_cannot_apply_are_refused(image, tmp_path):
    assert_one_line(vring_cli("serve", "blk", str(image), "--socket-fd", "0", "--socket-mode", "0600"), 2,
                    "--socket-mode and --socket-group")
    assert_one_line(vring_cli("serve", "blk", str(image), "--socket-fd", "0"), 2, "fd 0 is not a socket")
    assert_one_line(vring_cli("serve", "blk", str(image), "--socket", str(tmp_path / "s"), "--socket-mode",
                              "999"), 2, "not an octal mode")
    assert_one_line(vring_cli("serve", "blk", str(image), "--socket", str(tmp_path / "s"), "--socket-group",
                              "no-such-group-here"), 2, "no group named")


def test_serial_and_logical_block_size_reach_the_driver(image, tmp_path):
    sock = tmp_path / "blk.sock"
    with vring_blk(image, sock, extra=("--serial", "vring-serial-42", "--logical-block-size", "4096")):
        with Frontend(str(sock)) as front:
            front.connect()
            client = BlkClient(front, queue_size=16)
            assert client.get_id().rstrip(b"\0") == b"vring-serial-42"
            assert client.config.blk_size == 4096
            os.close(front.memfd)
    assert_one_line(serve(image, sock, "--serial", "x" * 21), 2, "more than 20")
    assert_one_line(serve(image, sock, "--logical-block-size", "1000"), 2, "not a power of two")
    odd = tmp_path / "odd.img"
    odd.write_bytes(bytes(4096 + 512))
    assert_one_line(serve(odd, sock, "--logical-block-size", "4096"), 1, "not a multiple of the logical block size")


def test_a_signal_as_soon_as_the_socket_appears_stops_the_server_cleanly(tmp_path):
    """A supervisor may signal the server the moment its socket shows up: the signal handlers are in place before
    the socket exists, so the server stops (exit 0) and removes its socket instead of dying of the signal."""
    for attempt in range(10):
        sock = tmp_path / f"s{attempt}.sock"
        proc = vring_popen("serve", "rng", "--socket", str(sock), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            pass  # no sleep: signal as close to the socket's appearance as we can
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not sock.exists()
