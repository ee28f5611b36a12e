"""A Linux guest under QEMU writes and verifies its whole vring disk from 4 processes with O_DIRECT while the test
kills `vring serve blk` with SIGKILL at random moments (or stops it with SIGTERM, a clean upgrade) and starts a new
one on the same socket; QEMU reconnects (``reconnect=1``), or in client mode QEMU listens and the new back-end
connects. The guest must see no I/O error, every block must verify, and the image on the host must hold the last
pattern written.

Every sector's pattern names the sector (``<00001234>`` repeated) and each pass rotates its digits, so a write
lost, done twice late, or sent to the wrong sector shows in the guest's compare and in the host's. The random
moments come from a seed the test prints (VRING_RESTART_SEED replays one).
"""

from __future__ import annotations

import json
import mmap
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Iterator, NamedTuple

import pytest

from support import guest
from support.backends import PACKAGE_ROOT
from vring import inflight_region_size
from vring.vhost_user import Frontend, ProtocolFeature, Request
from vring.vhost_user.inflight import recorded_in_flight
from vring.vhost_user.protocol import U64

IMAGE_SIZE = 16 << 20
SECTOR = 512
PASSES = 4  # enough I/O (~3 s a pass here) to outlast the restarts, which take ~2 s each, with margin
QUEUE_SIZE = 128  # QEMU's vhost-user-blk default, which the inflight buffer is made for
KILL_WAIT = 3.0  # seconds a kill waits for a request in flight before it goes ahead anyway
RESTARTS = 4  # per run: the issue asks for several kills while requests are in flight
GUEST_TIMEOUT = 240  # seconds of QEMU under coreutils timeout; a run takes well under half of it
WRITE_BLOCK = 4096  # bytes per write request the guest makes; its reads are READ_BLOCK
READ_BLOCK = 65536
DIGITS = b"0123456789"

# The back-end's variants: its extra `vring serve blk` arguments, whether restarting it needs the inflight record
# (a back-end that completes requests out of order cannot be restarted without it), and how many guest processes
# keep a request in flight each (the queue depth the guest reaches).
class Variant(NamedTuple):
    serve_args: tuple[str, ...]
    needs_inflight: bool
    workers: int


SERVE_VARIANTS: dict[str, Variant] = {
    "sync": Variant(("--aio", "sync"), False, 4),
    # io_uring with O_DIRECT on the host: up to 32 requests in flight, each taking the host disk's time, completed
    # out of order.
    "io_uring-depth32": Variant(("--aio", "io_uring", "--cache", "none"), True, 32),
}
RINGS = {"split": "", "packed": ",packed=on"}
STALL_TIMEOUT = 60  # seconds without a console line: the guest's I/O hangs (a worker's pass takes a few seconds)


class RestartFailure(Exception):
    """What went wrong in a restart run; the test adds the console, QEMU's and the back-end's logs to it."""


def check(ok: object, problem: str) -> None:
    if not ok:
        raise RestartFailure(problem)


def base_pattern() -> bytes:
    """Sector n of the disk: ``<n as 8 digits>`` 51 times, then ``#\\n`` (512 bytes)."""
    return b"".join(b"<%08d>" % n * 51 + b"#\n" for n in range(IMAGE_SIZE // SECTOR))


def rotation(p: int) -> bytes:
    """What ``tr 0123456789`` maps the digits to in pass ``p``: each shifted by ``p``."""
    return DIGITS[p % 10:] + DIGITS[:p % 10]


def pass_pattern(base: bytes, p: int) -> bytes:
    return base.translate(bytes.maketrans(DIGITS, rotation(p)))


def workload_script(workers: int) -> str:
    """The guest's /script: check O_DIRECT and the disk size, make every pass's pattern (so that the passes'
    I/O follows without a pause), then per pass: 4 workers, each its quarter of the disk, write it with O_DIRECT
    and read it back with O_DIRECT, compared with what was written; last, the kernel's I/O errors;
    ``RESULT=PASS`` only if nothing failed."""
    blocks = IMAGE_SIZE // workers // WRITE_BLOCK  # write blocks per worker
    per_read = READ_BLOCK // WRITE_BLOCK
    passes = " ".join(str(p) for p in range(1, PASSES + 1))
    rotations = "\n".join(f"  {p}) to={rotation(p).decode()} ;;" for p in range(1, PASSES + 1))
    return f"""set +e
sectors=$(cat /sys/block/vda/size)
if [ "$sectors" != {IMAGE_SIZE // SECTOR} ]; then echo "RESULT=FAIL /dev/vda has $sectors sectors"; exit 1; fi
# busybox dd opens with O_DIRECT for iflag=direct / oflag=direct: refuse to run without it (it would test the
# guest's page cache, not the device)
if ! dd if=/dev/vda of=/dev/null bs={WRITE_BLOCK} count=1 iflag=direct 2>/tmp/probe; then
  echo "RESULT=FAIL no O_DIRECT: $(cat /tmp/probe)"; exit 1
fi
echo "queues=$(ls /sys/block/vda/mq | wc -l)"
work() {{
  w=$1; p=$2; first=$((w * {blocks}))
  if ! dd if=/tmp/pattern.$p of=/dev/vda bs={WRITE_BLOCK} skip=$first seek=$first count={blocks} oflag=direct \\
       conv=notrunc 2>/tmp/err.$w; then
    echo "FAIL pass $p worker $w: write: $(tail -n 1 /tmp/err.$w)"; return 1
  fi
  if ! dd if=/dev/vda of=/tmp/read.$w bs={READ_BLOCK} skip=$((first / {per_read})) count={blocks // per_read} \\
       iflag=direct 2>/tmp/err.$w; then
    echo "FAIL pass $p worker $w: read: $(tail -n 1 /tmp/err.$w)"; return 1
  fi
  if ! cmp -n $(({blocks} * {WRITE_BLOCK})) /tmp/read.$w /tmp/pattern.$p 0 $((first * {WRITE_BLOCK})) \
       >/tmp/cmp.$w 2>&1; then
    echo "FAIL pass $p worker $w (from byte $((first * {WRITE_BLOCK}))): verify: $(cat /tmp/cmp.$w)"; return 1
  fi
  rm /tmp/read.$w
  echo "verified pass $p worker $w"
}}
for p in {passes}; do
  case $p in
{rotations}
  esac
  tr 0123456789 $to </base >/tmp/pattern.$p
done
rm /base  # the guest's RAM holds every pass's pattern and what each worker read back, no more
failed=0
for p in {passes}; do
  echo "IO-START pass $p"
  pids=""
  for w in $(seq 0 {workers - 1}); do work $w $p & pids="$pids $!"; done
  for pid in $pids; do wait $pid || failed=1; done
done
if dmesg | grep -iE "error|timed out|abort" >/tmp/kernel-errors; then
  sed 's/^/KERNEL: /' /tmp/kernel-errors; failed=1
fi
if [ $failed = 0 ]; then echo RESULT=PASS; else echo RESULT=FAIL; fi
exit $failed
"""


class Console:
    """QEMU's serial console, read by a thread as it comes, so the test can wait for a line while the guest
    runs."""

    def __init__(self, stream: IO[bytes], copy: Path) -> None:
        self.chunks: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream, copy), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[bytes], copy: Path) -> None:
        with open(copy, "w") as out:  # kept for a look after the test
            for line in iter(stream.readline, b""):
                text = line.decode(errors="replace").replace("\r\n", "\n")
                self.chunks.append(text)
                out.write(text)
                out.flush()

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def tail(self, chars: int = 4000) -> str:
        return self.text[-chars:]


class Backend:
    """`vring serve blk` on one socket, listening on it or (``client``) connecting to QEMU listening there,
    started again as often as the test likes; each run logs (JSON lines, -v) to a file of its own."""

    def __init__(self, image: Path, sock: Path, queues: int, extra: tuple[str, ...], client: bool = False) -> None:
        self.args = [sys.executable, "-m", "vring", "serve", "blk", str(image),
                     "--connect" if client else "--socket", str(sock),
                     "--queues", str(queues), "-v", "--log-format", "json", *extra]
        self.ready = "connecting to the front-end" if client else "listening on"
        self.sock = sock
        self.queues = queues
        self.logs: list[Path] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.sock.with_name(f"backend.{len(self.logs)}.log")
        self.logs.append(log)
        with open(log, "w") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))
        self.wait_for(lambda messages: any(m.startswith(self.ready) for m in messages), "start", 15)

    def messages(self, index: int = -1) -> list[str]:
        """The log messages of run ``index`` (JSON lines; the text lines of the command itself as they are)."""
        found = []
        for line in self.logs[index].read_text().splitlines():
            try:
                found.append(str(json.loads(line)["message"]))
            except (ValueError, KeyError, TypeError):
                found.append(line)
        return found

    def wait_for(self, done, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.messages()):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RestartFailure(f"back-end run {len(self.logs) - 1} exited with {self.proc.returncode} "
                                     f"before it could {what}")
            if time.monotonic() > deadline:
                raise RestartFailure(f"back-end run {len(self.logs) - 1} did not {what} in {timeout} s")
            time.sleep(0.05)

    def wait_serving(self, timeout: float = 30) -> None:
        """Until QEMU has reconnected and started every queue on this run."""
        def started(messages: list[str]) -> bool:
            return all(any(f"queue {q} started" in m for m in messages) for q in range(self.queues))
        self.wait_for(started, "have QEMU start its queues", timeout)

    def stop(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def vring_bases(self) -> dict[int, int]:
        """Queue -> the SET_VRING_BASE QEMU restarted it with on the current run: the used index of a split ring
        (QEMU rewinds it there), the initial 0x80008000 of a packed one (the inflight record knows better)."""
        found = {}
        for message in self.messages():
            match = re.search(r"queue (\d+) started .* base (0x[0-9a-f]+)", message)
            if match:
                found[int(match[1])] = int(match[2], 16)
        return found

    def resubmitted(self, index: int) -> dict[int, int]:
        """Queue -> requests run ``index`` resubmitted from the inflight record (what was in flight at the kill)."""
        found = {}
        for message in self.messages(index):
            match = re.search(r"queue (\d+): resubmitting (\d+) requests from the inflight record", message)
            if match:
                found[int(match[1])] = int(match[2])
        return found

    def tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {log.name} ---\n" + "\n".join(log.read_text().splitlines()[-lines:])
                         for log in self.logs[-2:])


def offers_inflight(extra: tuple[str, ...], scratch: Path) -> bool:
    """Whether `vring serve blk` with ``extra`` offers VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD: asked of one served
    on a scratch image in ``scratch``."""
    image = scratch / "probe.img"
    image.write_bytes(bytes(1 << 20))
    probe = Backend(image, scratch / "probe.sock", 1, extra)
    try:
        probe.start()
        with Frontend(str(probe.sock)) as front:
            front.connect()
            front.request(Request.GET_FEATURES)
            reply = front.request(Request.GET_PROTOCOL_FEATURES)
            os.close(front.memfd)
    finally:
        probe.close()
    return reply is not None and bool(U64.unpack(reply)[0] & ProtocolFeature.INFLIGHT_SHMFD)


def wait_for_console(console: Console, qemu: subprocess.Popen, text: str, timeout: float) -> bool:
    """Whether ``text`` shows on the console within ``timeout`` s (False at once if QEMU exits first)."""
    deadline = time.monotonic() + timeout
    while text not in console.text:
        if qemu.poll() is not None or time.monotonic() > deadline:
            return text in console.text
        time.sleep(0.05)
    return True


def wait_for_socket(sock: Path, qemu: subprocess.Popen, timeout: float = 30) -> None:
    """Until QEMU listens on ``sock`` (client mode)."""
    deadline = time.monotonic() + timeout
    while not sock.exists():
        check(qemu.poll() is None, f"QEMU exited with {qemu.returncode} before it listened on {sock}")
        check(time.monotonic() < deadline, f"QEMU did not listen on {sock} in {timeout} s")
        time.sleep(0.05)


def wait_for_exit(console: Console, qemu: subprocess.Popen) -> None:
    """Until the guest powers off; a RestartFailure if it hangs (no console line for STALL_TIMEOUT s) or QEMU
    exits without the guest's exit marker."""
    seen, last_change = "", time.monotonic()
    while qemu.poll() is None:
        text = console.text
        if text != seen:
            seen, last_change = text, time.monotonic()
        check(time.monotonic() - last_change < STALL_TIMEOUT,
              f"the guest hangs: nothing on its console for {STALL_TIMEOUT} s")
        time.sleep(0.2)
    console.thread.join(5)
    check(guest.EXIT_MARKER in console.text, f"QEMU exited with {qemu.returncode} before the guest finished")


def cases(kills: bool) -> Iterator:
    """(ring, queues, variant, client mode) of each run. The asynchronous back-end (the default's I/O, many in
    flight) runs split and packed rings, 1 and 2 queues, and client mode (QEMU listens, the back-end connects) with
    one queue; the synchronous one split and packed with one queue; the clean upgrade the asynchronous one, one
    queue, server mode: enough to cover each, short enough for CI."""
    for name, variant in SERVE_VARIANTS.items():
        full = kills and variant.needs_inflight
        for mode in ("server", "client") if full else ("server",):
            for ring in RINGS:
                for queues in (1, 2) if full and mode == "server" else (1,):
                    if not kills and not variant.needs_inflight:
                        continue
                    yield pytest.param(ring, queues, variant, mode == "client",
                                       id=f"{ring}-{queues}q-{name}" + ("-client" if mode == "client" else ""))


def run_restarts(kernel: Path, tmp_path: Path, ring: str, queues: int, variant: Variant, client: bool,
                 signum: int) -> None:
    """Boot the guest on a vring disk, stop the back-end with ``signum`` RESTARTS times while the guest's I/O
    runs, each time starting a new one on the socket; then check the guest's verdict and the image."""
    seed = int(os.environ.get("VRING_RESTART_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    base = base_pattern()
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(IMAGE_SIZE))
    sock = tmp_path / "blk.sock"
    extra = variant.serve_args
    needs_inflight = variant.needs_inflight or ring == "packed"
    initrd = guest.build_initramfs(tmp_path / "initrd.gz", workload_script(variant.workers), files={"base": base})
    backend = Backend(image, sock, queues, extra, client)
    qemu_stderr = tmp_path / "qemu.stderr"
    qemu: subprocess.Popen | None = None
    console: Console | None = None
    watch: RecordWatch | None = None
    stops: list[dict] = []
    try:
        if needs_inflight and not offers_inflight(extra, tmp_path):
            pytest.xfail(f"restarting this back-end ({ring} ring) needs the inflight record, and `vring serve blk` "
                         "does not offer INFLIGHT_SHMFD (issue 12)")
        # QEMU connects to a listening back-end and reconnects every second; in client mode it listens itself
        # (and waits for the back-end before it starts the guest).
        chardev = f"socket,id=c0,path={sock}," + ("server=on,wait=off" if client else "reconnect=1")
        command = guest.qemu_command(kernel, initrd, [
            "-chardev", chardev,
            "-device", f"vhost-user-blk-pci,chardev=c0,num-queues={queues}{RINGS[ring]}",
        ], smp=queues)
        if not client:
            backend.start()
        with open(qemu_stderr, "w") as err:
            qemu = subprocess.Popen(["timeout", "--kill-after=5", str(GUEST_TIMEOUT), *command],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    start_new_session=True)
        assert qemu.stdout is not None
        console = Console(qemu.stdout, tmp_path / "console.txt")
        failure = None
        try:
            if client:
                wait_for_socket(sock, qemu)
                backend.start()
            # A SIGKILL of the asynchronous back-end waits for requests in flight: each then tests a recovery.
            if signum == signal.SIGKILL and variant.needs_inflight:
                watch = RecordWatch(qemu, queues, ring == "packed")
            stop_and_restart(backend, console, qemu, rng, signum, stops, watch)
            if watch is not None:
                check(any(stop["resubmitted"] for stop in stops),
                      "no restart resubmitted a request: no kill caught one in flight, the run tested no recovery")
            check_outcome(backend, console, qemu, image, pass_pattern(base, PASSES), queues)
        except RestartFailure as exc:
            failure = str(exc)
        if failure is not None:
            pytest.fail(f"{failure} (seed {seed}, stops {stops})\n--- guest console ---\n{console.tail()}\n"
                        f"--- QEMU stderr ---\n{qemu_stderr.read_text()[-2000:]}\n--- back-end ---\n"
                        f"{backend.tail()}", pytrace=False)
        mode = "client mode" if client else "server mode"
        print(f"\n{ring} ring, {queues} queue(s), {' '.join(extra)}, {mode}: {len(stops)} stops by "
              f"{signal.Signals(signum).name}, seed {seed}: {json.dumps(stops)}")
    finally:
        if watch is not None:
            watch.close()
        backend.close()
        if qemu is not None and qemu.poll() is None:
            os.killpg(qemu.pid, signal.SIGKILL)
            qemu.wait()


class RecordWatch:
    """The inflight record as QEMU holds it (its fd of the back-end's memfd, opened through /proc): how many
    requests the back-end has popped and not completed right now, summed over the queues. The test kills the
    back-end at a moment this is above 0, so that every kill of an asynchronous back-end tests a recovery."""

    def __init__(self, qemu: subprocess.Popen, queues: int, packed: bool) -> None:
        self.qemu_pid = qemu_process(qemu.pid)
        self.queues = queues
        self.packed = packed
        self.map: mmap.mmap | None = None

    def count(self) -> int:
        if self.map is None:
            self.map = self._open()
            if self.map is None:
                return 0
        size = inflight_region_size(QUEUE_SIZE, self.packed)
        view = memoryview(self.map)
        try:
            return sum(recorded_in_flight(view[q * size:(q + 1) * size], QUEUE_SIZE, self.packed)
                       for q in range(self.queues))
        finally:
            view.release()

    def _open(self) -> mmap.mmap | None:
        fds = Path(f"/proc/{self.qemu_pid}/fd")
        for fd in fds.iterdir():
            try:
                if "memfd:vring-inflight" in os.readlink(fd):
                    with open(fd, "rb") as file:
                        return mmap.mmap(file.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)
            except OSError:
                continue  # an fd QEMU closed meanwhile
        return None

    def close(self) -> None:
        if self.map is not None:
            self.map.close()


def qemu_process(timeout_pid: int) -> int:
    """QEMU's pid: the child of the coreutils ``timeout`` it runs under."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{timeout_pid}/task/{timeout_pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RestartFailure("QEMU did not start under timeout")


def wait_for_in_flight(watch: RecordWatch, timeout: float = KILL_WAIT) -> int:
    """Poll the record until it shows a request in flight (or ``timeout`` passes); the count last seen."""
    deadline = time.monotonic() + timeout
    seen = watch.count()
    while not seen and time.monotonic() < deadline:
        time.sleep(0.0005)
        seen = watch.count()
    return seen


def stop_and_restart(backend: Backend, console: Console, qemu: subprocess.Popen, rng: random.Random, signum: int,
                     stops: list[dict], watch: RecordWatch | None) -> None:
    """RESTARTS times, at a random moment of the guest's I/O (with ``watch``: the first moment after it that the
    record shows requests in flight): stop the back-end, start a new one, wait until QEMU has reconnected and
    started its queues. ``stops`` gets what each restart found."""
    check(wait_for_console(console, qemu, "IO-START pass 1", 90), "the guest's I/O did not start")
    for n in range(RESTARTS):
        time.sleep(rng.uniform(0.1, 0.8))  # the guest's requests are in flight at any moment of its passes
        check("RESULT=" not in console.text, f"the guest finished before stop {n + 1}: give it more passes")
        seen = wait_for_in_flight(watch) if watch is not None else None
        at = time.monotonic()
        code = backend.stop(signum)
        if signum == signal.SIGKILL:
            check(code == -signal.SIGKILL, f"the back-end exited with {code} before the SIGKILL")
        else:
            check(code == 0, f"the back-end exited with {code} on {signal.Signals(signum).name}")
        backend.start()
        backend.wait_serving()
        stops.append({"stop": n + 1, "back_after_s": round(time.monotonic() - at, 2),
                      "vring_base": backend.vring_bases(), "in_flight_seen": seen,
                      "resubmitted": backend.resubmitted(-1)})


def check_outcome(backend: Backend, console: Console, qemu: subprocess.Popen, image: Path, expected: bytes,
                  queues: int) -> None:
    """The guest passed with no I/O error, the image holds ``expected``, no back-end run broke."""
    wait_for_exit(console, qemu)
    check("RESULT=PASS" in console.text and guest.exit_code_of(console.text) == 0, "the guest failed")
    check(f"queues={queues}\n" in console.text, f"the guest does not see {queues} queues")
    check(backend.stop(signal.SIGTERM) == 0, "the last back-end did not stop cleanly")
    data = image.read_bytes()
    if data != expected:
        bad = [n for n in range(IMAGE_SIZE // SECTOR)
               if data[n * SECTOR:(n + 1) * SECTOR] != expected[n * SECTOR:(n + 1) * SECTOR]]
        raise RestartFailure(f"the host image differs from the last pass in {len(bad)} sectors, the first "
                             f"{bad[:10]}")
    for n, log in enumerate(backend.logs):
        text = log.read_text()
        check("Traceback" not in text and "protocol error" not in text, f"back-end run {n} broke")


@pytest.mark.parametrize("ring,queues,variant,client", list(cases(kills=True)))
def test_guest_io_survives_sigkill_of_the_back_end(kernel: Path, tmp_path: Path, ring: str, queues: int,
                                                   variant: Variant, client: bool) -> None:
    run_restarts(kernel, tmp_path, ring, queues, variant, client, signal.SIGKILL)


@pytest.mark.parametrize("ring,queues,variant,client", list(cases(kills=False)))
def test_guest_io_survives_a_clean_upgrade_of_the_back_end(kernel: Path, tmp_path: Path, ring: str, queues: int,
                                                           variant: Variant, client: bool) -> None:
    """SIGTERM: the old back-end finishes what it has in flight (or records it) and exits 0; the new one goes on."""
    run_restarts(kernel, tmp_path, ring, queues, variant, client, signal.SIGTERM)
