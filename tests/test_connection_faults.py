"""A connection whose workers cannot be restarted after a message (no fd for an eventfd, no thread) closes with
one log line, reports the handler's own error first, and leaks nothing: not even the memfd of a GET_INFLIGHT_FD
reply it will never send."""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time

import pytest

from test_server_hostile import memfd, start_ring
from vring.devices.rng import RngDevice
from vring.vhost_user import Connection
from vring.vhost_user import worker as worker_module
from vring.vhost_user.handler import Handler
from vring.vhost_user.protocol import INFLIGHT, Message, Request, send_message
from vring.vhost_user.vring import Vring


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def inflight_memfds() -> int:
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += "vring-inflight" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own fd, gone by now
            pass
    return found


def no_thread(self) -> None:
    raise RuntimeError("can't start new thread")


def no_fd(*_args) -> int:
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def run_with_failing_restart(monkeypatch, caplog, fail: str, payload: bytes) -> BaseException | None:
    """Start a ring (its worker runs), make the next worker fail to start as ``fail`` says, send GET_INFLIGHT_FD
    with ``payload``; returns what escaped ``Connection.run``, once the connection is closed."""
    caplog.set_level(logging.INFO, logger="vring.vhost_user")
    ours, theirs = socket.socketpair()
    conn = Connection(ours, RngDevice(), "faulty")
    escaped: list[BaseException] = []

    def run() -> None:
        try:
            conn.run(threading.Event())
        except BaseException as exc:  # noqa: BLE001  (what the test is about)
            escaped.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    mem = memfd()
    try:
        start_ring(theirs, mem)
        deadline = time.monotonic() + 5
        while not conn.workers:
            assert time.monotonic() < deadline, "the ring's worker never started"
            time.sleep(0.01)
        if fail == "thread":
            monkeypatch.setattr(worker_module.Worker, "start", no_thread)
        else:
            monkeypatch.setattr(os, "eventfd", no_fd)  # Worker() makes its stop eventfd first
        send_message(theirs, Request.GET_INFLIGHT_FD, payload)
        thread.join(5)
        assert not thread.is_alive(), "the connection did not close"
    finally:
        monkeypatch.undo()
        theirs.close()
        os.close(mem)
    return escaped[0] if escaped else None


@pytest.mark.parametrize("fail,line", [("thread", "faulty: closing the connection: can't start new thread"),
                                       ("fd", "faulty: connection failed: [Errno 24] Too many open files")])
def test_workers_that_cannot_restart_after_get_inflight_fd_close_the_connection_and_leak_nothing(
        monkeypatch, caplog, fail, line):
    before = open_fds()
    escaped = run_with_failing_restart(monkeypatch, caplog, fail, INFLIGHT.pack(0, 0, 1, 64))
    assert escaped is None, f"escaped Connection.run: {escaped!r}"
    assert line in caplog.text
    assert inflight_memfds() == 0
    assert {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in open_fds() - before} == {}


def test_the_handlers_error_is_reported_not_the_restarts(monkeypatch, caplog):
    escaped = run_with_failing_restart(monkeypatch, caplog, "thread", b"short")
    assert escaped is None, f"escaped Connection.run: {escaped!r}"
    assert "faulty: protocol error, closing the connection: GET_INFLIGHT_FD" in caplog.text, caplog.text
    assert "can't start new thread" not in caplog.text


class NoKicks:
    def watch(self, vring: Vring) -> None:
        pass

    def unwatch(self, vring: Vring) -> None:
        pass


def test_closing_the_handler_closes_a_reply_fd_never_taken():
    handler = Handler(RngDevice(), "h", NoKicks())
    assert handler.handle(Message(Request.GET_INFLIGHT_FD, payload=INFLIGHT.pack(0, 0, 1, 64))) is not None
    assert inflight_memfds() > 0  # the reply's memfd (and the buffer's own mapping)
    handler.close()
    assert inflight_memfds() == 0
