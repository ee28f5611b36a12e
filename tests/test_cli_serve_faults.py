"""`vring serve`: faults of the process itself (out of fds, a signal at a bad moment) stop nothing and hang nothing."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

from support.cli_run import ENV, assert_one_line
from test_cli_serve import accepted_frontend, client, image, listening, read_through, stop_cleanly, wait_for_text
from vring.drivers.blk import BlkClient

__all__ = ["image"]  # the fixture, used by name

# Runs `vring ARGS` with every new fd refused (EMFILE) from the first connection attempt on.
STARVED_CONNECT = """
import os, resource, sys
import vring.cli.serve as serve
from vring.cli import main
connect = serve.connect
def starved(backend, args):
    lowest = os.dup(0)
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    connect(backend, args)
serve.connect = starved
sys.exit(main(sys.argv[1:]))
"""


def test_out_of_fds_on_the_only_attempt_is_one_line(image, tmp_path):
    listener = listening(tmp_path / "fe.sock")
    try:
        done = subprocess.run([sys.executable, "-c", STARVED_CONNECT, "serve", "blk", str(image), "--connect",
                               str(tmp_path / "fe.sock"), "--reconnect-delay", "0"],
                              capture_output=True, text=True, timeout=30, env=ENV)
    finally:
        listener.close()
    assert_one_line(done, 1, f"cannot connect to {tmp_path / 'fe.sock'}: Too many open files")


def test_out_of_fds_on_a_redial_is_retried_and_logged_once(image, tmp_path):
    """The front-end goes away while the back-end has no fd to spare: the re-dial fails (EMFILE from socket()),
    is logged once however often it is retried, and succeeds once fds are free again."""
    path, log = tmp_path / "frontend.sock", tmp_path / "client.log"
    listener = listening(path)
    proc = client(image, path, log, "--reconnect-delay", "0.1")
    soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
    try:
        front = accepted_frontend(listener)
        with front:
            assert BlkClient(front, queue_size=16).read(0, 1) == image.read_bytes()[:512]
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (3, hard))  # no new fd but 0, 1 and 2 are taken
            os.close(front.memfd)
        wait_for_text(log, f"cannot connect to {path}: Too many open files; retrying every 0.1 s", proc)
        time.sleep(1)  # some ten attempts more
        assert proc.poll() is None, log.read_text()
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
        read_through(accepted_frontend(listener), image, 3)
        text = wait_for_text(log, f"connected to {path} again", proc)
        assert text.count("Too many open files") == 1, text
    finally:
        if proc.poll() is None:
            resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
        listener.close()
        stop_cleanly(proc, log)


# Runs `vring ARGS` with SIGTERM arriving while the main thread holds the lock of the stop event (as inside its
# own stop_event.set() in close()): a handler that took that lock would wait for itself forever.
SIGNAL_UNDER_THE_LOCK = """
import os, signal, sys
from vring.cli import main
from vring.vhost_user.server import VhostUserBackend
serve_forever = VhostUserBackend.serve_forever
def signalled_under_the_lock(self):
    with self.stop_event._cond:  # what Event.set() holds
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between two of these
            pass
        print("handled under the lock", file=sys.stderr, flush=True)
    serve_forever(self)
VhostUserBackend.serve_forever = signalled_under_the_lock
sys.exit(main(sys.argv[1:]))
"""


def test_a_signal_while_the_stop_event_is_locked_stops_the_server(tmp_path):
    sock = tmp_path / "s.sock"
    done = subprocess.run([sys.executable, "-c", SIGNAL_UNDER_THE_LOCK, "serve", "rng", "--socket", str(sock), "-v"],
                          capture_output=True, text=True, timeout=30, env=ENV)
    assert done.returncode == 0, done.stderr
    assert "handled under the lock" in done.stderr
    assert "signal 15: stopping" in done.stderr
    assert "Traceback" not in done.stderr
    assert not sock.exists()
