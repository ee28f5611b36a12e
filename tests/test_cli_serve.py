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


# -- client mode: the back-end connects to a listening front-end (QEMU server=on, DPDK client mode) -------------
def listening(path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(30)
    return listener


def accepted_frontend(listener: socket.socket) -> Frontend:
    """A Frontend on the next connection the back-end makes to ``listener``."""
    sock, _ = listener.accept()
    sock.settimeout(10)
    front = Frontend(listener.getsockname())
    front.sock = sock
    return front


def read_through(front: Frontend, image, sector: int) -> None:
    with front:
        assert BlkClient(front, queue_size=16).read(sector, 1) == image.read_bytes()[sector * 512:(sector + 1) * 512]
        os.close(front.memfd)


def wait_for_text(path, text: str, proc: subprocess.Popen, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, path.read_text()
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.02)
    return path.read_text()


def client(image, path, log, *extra: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return vring_popen("serve", "blk", str(image), "--connect", str(path), "-v", *extra, stderr=out)


def stop_cleanly(proc: subprocess.Popen, log) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_client_mode_serves_the_front_end_and_reconnects_when_it_goes_away(image, tmp_path):
    path, log = tmp_path / "frontend.sock", tmp_path / "client.log"
    listener = listening(path)
    proc = client(image, path, log, "--reconnect-delay", "0.1")
    try:
        for sector in (1, 2, 3):  # each connection a new session: the front-end closing it is not the end
            read_through(accepted_frontend(listener), image, sector)
        listener.close()
        path.unlink()
        wait_for_text(log, "No such file or directory; retrying every 0.1 s", proc)
        time.sleep(1)  # ten more attempts fail the same way: logged once, not ten times
        listener = listening(path)
        read_through(accepted_frontend(listener), image, 4)
        text = wait_for_text(log, "connected to", proc)
        assert text.count("cannot connect to") == 1, text
        assert f"connected to {path} again" in text
        assert text.count("front-end connected") == 4
    finally:
        listener.close()
        stop_cleanly(proc, log)
    assert path.exists()  # the front-end's socket: not the back-end's to remove


def test_client_mode_waits_for_a_front_end_that_is_not_there_yet(image, tmp_path):
    path, log = tmp_path / "later.sock", tmp_path / "client.log"
    proc = client(image, path, log, "--reconnect-delay", "0.05")
    try:
        wait_for_text(log, "retrying every 0.05 s", proc)
        listener = listening(path)
        read_through(accepted_frontend(listener), image, 7)
        listener.close()
    finally:
        stop_cleanly(proc, log)


def test_client_mode_without_retry_serves_one_connection_then_exits(image, tmp_path):
    path = tmp_path / "once.sock"
    listener = listening(path)
    proc = vring_popen("serve", "blk", str(image), "--connect", str(path), "--reconnect-delay", "0",
                       stderr=subprocess.PIPE, text=True)
    read_through(accepted_frontend(listener), image, 5)
    _, err = proc.communicate(timeout=30)
    listener.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_client_mode_without_retry_fails_in_one_line(image, tmp_path):
    missing = tmp_path / "missing.sock"
    assert_one_line(serve_connect(image, missing, "0"), 1, f"cannot connect to {missing}: No such file")
    refused = tmp_path / "refused.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:  # bound, not listening: refuses
        bound.bind(str(refused))
        assert_one_line(serve_connect(image, refused, "0"), 1, f"cannot connect to {refused}: connection refused")
    before = image.read_bytes()
    assert_one_line(serve_connect(image, image, "0"), 2, f"cannot connect to {image}: not a socket")
    assert image.read_bytes() == before


def serve_connect(image, path, delay: str) -> subprocess.CompletedProcess:
    return vring_cli("serve", "blk", str(image), "--connect", str(path), "--reconnect-delay", delay, timeout=30)


def test_client_mode_retries_a_path_that_is_not_a_socket_and_stops_on_a_signal(image, tmp_path):
    target, log = tmp_path / "plain-file", tmp_path / "client.log"
    target.write_bytes(b"not a socket")
    proc = client(image, target, log, "--reconnect-delay", "0.05")
    wait_for_text(log, f"cannot connect to {target}: not a socket; retrying every 0.05 s", proc)
    time.sleep(0.5)
    stop_cleanly(proc, log)
    assert log.read_text().count("not a socket") == 1
    assert target.read_bytes() == b"not a socket"


def test_a_full_listen_backlog_does_not_hold_the_client(image, tmp_path):
    """A front-end that does not accept (its backlog full) is a failed attempt, not a thread stuck in connect()."""
    path, log = tmp_path / "busy.sock", tmp_path / "client.log"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued.connect(str(path))  # the one the backlog holds
    try:
        proc = client(image, path, log, "--reconnect-delay", "0.05")
        wait_for_text(log, "listen backlog is full; retrying", proc)
        stop_cleanly(proc, log)
    finally:
        queued.close()
        listener.close()


@pytest.mark.parametrize("extra,fragment", [
    (("--socket", "S", "--reconnect-delay", "1"), "--reconnect-delay applies to --connect"),
    (("--connect", "S", "--socket-mode", "0600"), "--socket-mode and --socket-group apply to a socket vring "
                                                  "creates, not to --connect"),
    (("--connect", "S", "--reconnect-delay", "-1"), "must be a number of seconds, 0 or more"),
    (("--connect", "S", "--reconnect-delay", "soon"), "is not a number of seconds"),
    (("--connect", "S", "--socket", "T"), "not allowed with argument"),
])
def test_usage_errors_of_client_mode(image, tmp_path, extra, fragment):
    extra = tuple(str(tmp_path / a) if a in ("S", "T") else a for a in extra)
    assert_one_line(vring_cli("serve", "blk", str(image), *extra, timeout=30), 2, fragment)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_client_while_it_serves_a_connection(image, tmp_path, signum):
    path, log = tmp_path / "frontend.sock", tmp_path / "client.log"
    listener = listening(path)
    proc = client(image, path, log)
    with listener, accepted_frontend(listener) as front:
        assert BlkClient(front, queue_size=16).read(0, 1) == image.read_bytes()[:512]
        proc.send_signal(signum)
        assert proc.wait(15) == 0, log.read_text()
        os.close(front.memfd)
    assert "Traceback" not in log.read_text()


def test_the_client_api_refuses_in_one_line_without_retry(tmp_path):
    from vring.devices.rng import RngDevice
    from vring.vhost_user.server import ConnectError, VhostUserBackend

    backend = VhostUserBackend(RngDevice, str(tmp_path / "none.sock"))
    with pytest.raises(ConnectError, match=r"^cannot connect to .*none\.sock: No such file or directory$"):
        backend.connect(reconnect_delay=0)
    with pytest.raises(ValueError, match="reconnect_delay"):
        backend.connect(reconnect_delay=-1)
