"""The virtio-blk benchmark matrix: back-ends x clients x workloads x page cache / O_DIRECT, back-ends alternated.

    python -m bench.blk_matrix [--quick] [--rounds N] [--seconds T] [--json PATH] [--vring-args "--aio io_uring"]

Back-ends: `vring serve blk` (once per `--aio` choice it offers, or per `--vring-args`), qemu-storage-daemon with
`aio=io_uring` and with its default (`aio=threads`). Clients: the C floor client (bench/c) and vring's
(`vring blk bench`, a process of its own like the C one). Each image is pre-filled with the per-sector pattern and
every run checks every read against it and every status byte: a single error fails the whole matrix. Within a
round every back-end runs a case before the next case starts (A B A B), so drift on a shared machine hits all
alike. Back-end CPU per request comes from /proc/PID/stat (utime + stime of all its threads, before and after the
run, over the requests done): steadier than IOPS under other load. Figures: the median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vring.drivers import blk_cfloor
from vring.drivers.blk_pattern import fill_image

ROOT = Path(__file__).resolve().parent.parent
SEED = 13
CASES = {  # name -> (queues, depth, workload)
    "1x1-randread": (1, 1, "randread"), "1x32-randread": (1, 32, "randread"),
    "2x32-randread": (2, 32, "randread"), "1x32-randwrite": (1, 32, "randwrite"),
    "1x32-seqread": (1, 32, "seqread"),
}
QUICK_CASES = ("1x1-randread", "1x32-randread", "2x32-randread")
CACHES = ("page", "direct")
CLIENTS = ("c-floor", "vring")
TICK = os.sysconf("SC_CLK_TCK")


class MatrixError(Exception):
    """A run failed (a wrong byte, a failed request, a back-end that died): the matrix stops."""


@dataclass
class Backend:
    name: str  # as the table shows it
    command: list[str]  # {image} and {socket} filled in per cache mode
    direct: list[str] | None  # arguments for O_DIRECT, or None: the back-end has no such mode


def vring_backends(extra: list[str]) -> list[Backend]:
    """`vring serve blk`: one back-end per --vring-args given, else one per --aio choice it offers, else one."""
    helptext = subprocess.run([sys.executable, "-m", "vring", "serve", "blk", "--help"], capture_output=True,
                              text=True, env=_env()).stdout
    variants = [shlex.split(e) for e in extra]
    if not variants:
        aio = re.search(r"--aio \{([\w,]+)\}", helptext)
        variants = [["--aio", choice] for choice in aio.group(1).split(",")] if aio else [[]]
    direct = ["--cache", "none"] if re.search(r"--cache\b", helptext) else None
    base = [sys.executable, "-m", "vring", "serve", "blk", "{image}", "--socket", "{socket}", "--queues", "2", "-q"]
    return [Backend("vring" + ("(" + " ".join(v).lstrip("-") + ")" if v else ""), base + v, direct)
            for v in variants]


def qsd_backend(aio: str | None) -> Backend:
    qsd = shutil.which("qemu-storage-daemon")
    if qsd is None:
        raise MatrixError("qemu-storage-daemon is not installed (scripts/install-guest-deps.sh installs it)")
    file_opts = "driver=file,node-name=file0,filename={image}" + (f",aio={aio}" if aio else "")
    export = ("type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={socket},writable=on,"
              "num-queues=2")
    command = [qsd, "--blockdev", file_opts + "{cache}", "--blockdev", "driver=raw,node-name=disk0,file=file0",
               "--export", export]
    return Backend(f"qsd(aio={aio or 'threads, default'})", command, [])


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


@dataclass
class Running:
    backend: Backend
    proc: subprocess.Popen[bytes]
    socket: str
    image: Path

    def cpu_seconds(self) -> float:
        """utime + stime of the whole back-end process (every thread), in seconds."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5), after pid and comm


def start(backend: Backend, cache: str, image: Path, socket: Path) -> Running:
    direct = cache == "direct"
    args = []
    for arg in backend.command:
        cache_opt = (",cache.direct=on" if direct else ",cache.direct=off") if backend.name.startswith("qsd") else ""
        args.append(arg.format(image=image, socket=socket, cache=cache_opt))
    if direct and not backend.name.startswith("qsd"):
        args += backend.direct or []
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 15
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace").strip()
            raise MatrixError(f"{backend.name} ({cache}) did not start: {err or 'no socket in 15 s'}")
        time.sleep(0.02)
    return Running(backend, proc, str(socket), image)


def stop(running: Running) -> None:
    running.proc.terminate()
    try:
        running.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait()


def run_client(client: str, running: Running, case: str, seconds: float, capacity: int,
               c_floor: Path) -> dict[str, Any]:
    queues, depth, workload = CASES[case]
    if client == "c-floor":
        try:
            return blk_cfloor.run(running.socket, workload, queues=queues, depth=depth, seconds=seconds, seed=SEED,
                                  binary=c_floor)
        except blk_cfloor.CFloorError as exc:
            raise MatrixError(f"{running.backend.name}, {case}, C floor: {exc}") from None
    args = [sys.executable, "-m", "vring", "blk", "--socket", running.socket, "--queues", str(queues), "bench",
            "--workloads", workload, "--depth", str(depth), "--seconds", str(seconds), "--pattern", str(SEED),
            "--json", "-"] + (["--scratch", f"0:{capacity}"] if workload == "randwrite" else [])
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=seconds + 60)
    if done.returncode:
        raise MatrixError(f"{running.backend.name}, {case}, vring's client: {done.stderr.strip()}")
    return json.loads(done.stdout[done.stdout.index("{"):])["results"][0]


def measure(client: str, running: Running, case: str, seconds: float, capacity: int,
            c_floor: Path) -> dict[str, Any]:
    if running.proc.poll() is not None:
        raise MatrixError(f"{running.backend.name} exited with {running.proc.returncode}")
    before = running.cpu_seconds()
    figures = run_client(client, running, case, seconds, capacity, c_floor)
    cpu = running.cpu_seconds() - before
    return {"backend": running.backend.name, "client": client, "case": case, "iops": figures["iops"],
            "lat_us_p50": figures["lat_us_p50"], "lat_us_p99": figures["lat_us_p99"],
            "requests": figures["requests"], "backend_cpu_s": cpu,
            "cpu_us_per_request": cpu / figures["requests"] * 1e6 if figures["requests"] else 0.0,
            "verified": figures["verified"]}


def images(directory: Path, backends: list[Backend], mib: int) -> Iterator[tuple[Backend, Path]]:
    """One pattern-filled image per back-end (each locks its own), read once so that the page cache is warm."""
    for k, backend in enumerate(backends):
        image = directory / f"disk{k}.img"
        if not image.exists():
            with open(image, "wb") as f:
                f.truncate(mib << 20)
            fill_image(image, SEED)
        image.read_bytes()
        yield backend, image


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The median over the rounds of each (cache, case, client, back-end)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["cache"], r["case"], r["client"], r["backend"]), []).append(r)
    return [{"cache": cache, "case": case, "client": client, "backend": backend, "rounds": len(rs),
             **{key: statistics.median(r[key] for r in rs)
                for key in ("iops", "lat_us_p50", "lat_us_p99", "cpu_us_per_request")}}
            for (cache, case, client, backend), rs in groups.items()]


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'cache':<7}{'case':<16}{'client':<9}{'back-end':<28}{'IOPS':>10}{'p50 us':>9}{'p99 us':>9}"
          f"{'CPU us/req':>11}")
    for r in rows:
        print(f"{r['cache']:<7}{r['case']:<16}{r['client']:<9}{r['backend']:<28}{r['iops']:>10,.0f}"
              f"{r['lat_us_p50']:>9.1f}{r['lat_us_p99']:>9.1f}{r['cpu_us_per_request']:>11.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.blk_matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"CI: 1 round of 0.3 s, page cache, {', '.join(QUICK_CASES)}, vring and qsd io_uring")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, back-ends alternated in each (default 3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each run (default 2)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--cache", default=",".join(CACHES), help="page, direct or both (default both)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="c-floor, vring or both (default both)")
    parser.add_argument("--vring-args", action="append", default=[], metavar="ARGS",
                        help="extra `vring serve blk` arguments, one back-end each (repeatable; default: one per "
                             "--aio choice it offers)")
    parser.add_argument("--no-qsd", action="store_true", help="leave qemu-storage-daemon out")
    parser.add_argument("--image-mib", type=int, default=256, help="size of each image (default 256 MiB)")
    parser.add_argument("--dir", type=Path, help="where the images go (default: a temporary directory); O_DIRECT "
                                                 "needs a file system that has it (not tmpfs)")
    parser.add_argument("--json", metavar="PATH", help="every run and the summary as JSON ('-': stdout)")
    args = parser.parse_args(argv)
    cases, caches, clients = args.cases.split(","), args.cache.split(","), args.clients.split(",")
    if args.quick:
        args.rounds, args.seconds, cases, caches, args.image_mib = 1, 0.3, list(QUICK_CASES), ["page"], 32
    for name, given, allowed in (("case", cases, CASES), ("cache", caches, CACHES), ("client", clients, CLIENTS)):
        unknown = [g for g in given if g not in allowed]
        if unknown:
            parser.error(f"unknown {name} {unknown[0]!r} (of {', '.join(allowed)})")
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir}: no such directory")
    try:
        c_floor = blk_cfloor.build(ROOT / blk_cfloor.RELATIVE_SOURCE)
        backends = vring_backends(args.vring_args)
        if not args.no_qsd:
            backends += [qsd_backend("io_uring")] + ([] if args.quick else [qsd_backend(None)])
        with tempfile.TemporaryDirectory(prefix="vring-blk-matrix-", dir=args.dir) as tmp:
            runs, notes = _run(Path(tmp), backends, args, cases, caches, clients, c_floor)
    except (MatrixError, blk_cfloor.CFloorError) as exc:
        print(f"blk_matrix: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("blk_matrix: interrupted", file=sys.stderr)
        return 130
    rows = summary(runs)
    print_table(rows)
    for note in notes:
        print(f"note: {note}")
    print(f"data: every read checked against the pattern of seed {SEED}, every status byte checked: "
          f"{len(runs)} runs, no error")
    if args.json:
        text = json.dumps({"rounds": args.rounds, "seconds": args.seconds, "runs": runs, "summary": rows,
                           "notes": notes, "load_average": os.getloadavg()}, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0


def _run(tmp: Path, backends: list[Backend], args: argparse.Namespace, cases: list[str], caches: list[str],
         clients: list[str], c_floor: Path) -> tuple[list[dict[str, Any]], list[str]]:
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    capacity = (args.image_mib << 20) // 512
    for cache in caches:
        usable = [b for b in backends if cache != "direct" or b.direct is not None]
        notes += [f"{b.name} has no O_DIRECT mode (no --cache): left out of the direct runs"
                  for b in backends if b not in usable]
        running: list[Running] = []
        try:
            for k, (backend, image) in enumerate(images(tmp, usable, args.image_mib)):
                running.append(start(backend, cache, image, tmp / f"b{k}-{cache}.sock"))
            for round_ in range(args.rounds):
                for case in cases:
                    for client in clients:
                        for r in running:  # A B A B: every back-end runs this case before the next case
                            runs.append({"round": round_, "cache": cache,
                                         **measure(client, r, case, args.seconds, capacity, c_floor)})
        finally:
            for r in running:
                stop(r)
    return runs, notes


if __name__ == "__main__":
    sys.exit(main())
