"""`vring blk`: a virtio-blk client for any vhost-user-blk back-end (info, read, write, verify, bench).

Only ``write`` writes by default. ``verify`` and ``bench`` read; they write only inside a range of sectors the user
names with ``--scratch START:COUNT``, whose contents they destroy. ``bench`` runs its requests in the C core
(``vring.drivers.blk_stream``) and, with ``--compare-c-floor``, the C floor client on the same back-end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable

from vring._errors import VringError
from vring._features import Feature
from vring.devices.blk import FEATURE_NAMES, SECTOR
from vring.drivers import blk_cfloor
from vring.drivers.blk import BlkClient, BlkError
from vring.drivers.blk_stream import StreamError
from vring.vhost_user.frontend import BackendError, Frontend

from ._args import CommandError, check_output_path, int_range, positive_float

BLOCK = 8  # sectors of one verify request, and of a bench request by default: 4 KiB
READ_WORKLOADS = ("randread", "seqread")
WRITE_WORKLOADS = ("randwrite",)

EXAMPLES = """examples:
  vring blk --socket /tmp/blk.sock info
  vring blk --socket /tmp/blk.sock info --json
  vring blk --socket /tmp/blk.sock read --sector 0 --count 8 --output mbr.bin
  vring blk --socket /tmp/blk.sock write --sector 2048 --input data.bin
  vring blk --socket /tmp/blk.sock verify                           # reads only
  vring blk --socket /tmp/blk.sock verify --scratch 1048576:2048    # writes sectors 1048576-1050623
  vring blk --socket /tmp/blk.sock --queues 4 bench --json figures.json
  vring blk --socket /tmp/blk.sock bench --pattern 7 --compare-c-floor   # disk filled with blk_pattern's seed 7

Commands that write: `write`, and `verify` / `bench` given --scratch (they overwrite that range)."""


def scratch_range(text: str) -> tuple[int, int]:
    """An argparse type: START:COUNT, the sectors a command may overwrite."""
    start, sep, count = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not START:COUNT (sectors)")
    try:
        return int_range(0)(start), int_range(1)(count)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def queue_size(text: str) -> int:
    """An argparse type: a power of two from 2 to 32768 (what a split ring allows)."""
    value = int_range(2, 32768)(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"{value} is not a power of two")
    return value


def block_size(text: str) -> int:
    """An argparse type: bytes per bench request, a multiple of 512 up to 1 MiB."""
    value = int_range(SECTOR, 1 << 20)(text)
    if value % SECTOR:
        raise argparse.ArgumentTypeError(f"{value} is not a multiple of {SECTOR}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", required=True, help="the back-end's unix socket")
    parser.add_argument("--queues", type=int_range(1), default=1, help="request queues to use (default 1)")
    parser.add_argument("--queue-size", type=queue_size, default=128,
                        help="descriptors per queue, a power of two (default 128)")
    parser.add_argument("--no-event-idx", action="store_true", help="do not negotiate VIRTIO_F_EVENT_IDX")
    parser.add_argument("--no-indirect", action="store_true", help="do not negotiate VIRTIO_F_INDIRECT_DESC")
    parser.add_argument("--packed", action="store_true",
                        help="use packed rings (VIRTIO_F_RING_PACKED); an error if the back-end has none")
    parser.add_argument("--timeout", type=positive_float, default=10.0,
                        help="seconds to wait for any answer (default 10)")
    sub = parser.add_subparsers(dest="action", required=True)
    info = sub.add_parser("info", help="negotiated features and the config space in words")
    info.add_argument("--json", action="store_true", help="the same as one JSON object on stdout")
    read = sub.add_parser("read", help="read sectors to a file (default stdout)")
    read.add_argument("--sector", type=int_range(0), required=True, help="first sector (512 bytes) to read")
    read.add_argument("--count", type=int_range(1), required=True, help="sectors to read")
    read.add_argument("--output", default="-", help="file to write them to ('-', the default: stdout)")
    write = sub.add_parser("write", help="WRITES: a file (default stdin) at a sector, then flush")
    write.add_argument("--sector", type=int_range(0), required=True, help="first sector to overwrite")
    write.add_argument("--input", default="-",
                       help="file to write, a multiple of 512 bytes ('-', the default: stdin)")
    verify = sub.add_parser("verify", help="read a range twice and compare; with --scratch, WRITES a pattern "
                                           "there and reads it back")
    verify.add_argument("--sector", type=int_range(0), default=0, help="first sector of the read check (default 0)")
    verify.add_argument("--count", type=int_range(1), default=2048,
                        help="sectors of the read check (default 2048: 1 MiB)")
    verify.add_argument("--scratch", type=scratch_range, metavar="START:COUNT",
                        help="WRITES: sectors to overwrite with a pattern and read back instead")
    bench = sub.add_parser("bench", help="fio-like 4 KiB workloads: IOPS, MiB/s, latency percentiles (reads, "
                                         "unless --scratch: then randwrite WRITES there)")
    bench.add_argument("--depth", type=int_range(1), default=32, help="requests in flight per queue (default 32)")
    bench.add_argument("--seconds", type=positive_float, default=3.0, help="length of each workload (default 3)")
    bench.add_argument("--workloads", help=f"comma-separated, of {', '.join(READ_WORKLOADS + WRITE_WORKLOADS)} "
                                           "(default: the reads, and randwrite with --scratch)")
    bench.add_argument("--scratch", type=scratch_range, metavar="START:COUNT",
                       help="WRITES: sectors randwrite may overwrite (at least 8)")
    bench.add_argument("--json", metavar="PATH", help="write the figures as JSON ('-' for stdout)")
    bench.add_argument("--block-size", type=block_size, default=BLOCK * SECTOR,
                       help="bytes per request, a multiple of 512 (default 4096)")
    bench.add_argument("--pattern", type=int_range(0, 2**64 - 1), metavar="SEED",
                       help="the disk holds vring.drivers.blk_pattern's pattern of SEED: every read is checked "
                            "against it (and randwrite writes it); without it only status bytes are checked")
    bench.add_argument("--compare-c-floor", action="store_true",
                       help="run each workload with the C floor client (bench/c, built with cc) on the same "
                            "back-end too, and report vring's client against it")
    bench.add_argument("--c-floor-source", metavar="PATH",
                       help="the C floor client's source (default: bench/c/ of the checkout VRING_SOURCE_DIR "
                            "names, else of the one vring is imported from)")


def _client(args: argparse.Namespace) -> BlkClient:
    frontend = Frontend(args.socket, timeout=args.timeout).connect()
    try:
        client = BlkClient(frontend, queues=args.queues, queue_size=args.queue_size,
                           event_idx=not args.no_event_idx, indirect=not args.no_indirect, packed=args.packed)
    except BaseException:
        frontend.close()
        raise
    if args.packed and not client.features & Feature.RING_PACKED:
        frontend.close()
        raise CommandError("the back-end does not offer packed rings (VIRTIO_F_RING_PACKED): drop --packed")
    return client


def run(args: argparse.Namespace) -> int:
    actions: dict[str, Callable[[BlkClient, argparse.Namespace, Any], int]] = {
        "info": _info, "read": _read, "write": _write, "verify": _verify, "bench": _bench}
    action = actions[args.action]
    prepared = _prepare(args)  # every local check before the back-end is asked anything
    try:
        client = _client(args)
    except (BackendError, OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    try:
        return action(client, args, prepared)
    except (BlkError, StreamError, blk_cfloor.CFloorError, BackendError, TimeoutError, ValueError,
            VringError) as exc:  # VringError: the back-end broke the ring
        raise CommandError(str(exc)) from None
    finally:
        client.frontend.close()


def _prepare(args: argparse.Namespace) -> Any:
    """What a command needs before it connects: the data to write, a checked output path, the workloads and the
    C floor client's binary."""
    if args.action == "write":
        try:
            data = sys.stdin.buffer.read() if args.input == "-" else _read_file(args.input)
        except OSError as exc:
            raise CommandError(f"cannot read {args.input}: {exc.strerror}") from None
        if not data or len(data) % SECTOR:
            raise CommandError(f"{len(data)} bytes is not a multiple of {SECTOR} (or is nothing)", code=2)
        return data
    if args.action == "read":
        check_output_path(args.output)
    if args.action == "bench":
        if args.json:
            check_output_path(args.json)
        default = READ_WORKLOADS + (WRITE_WORKLOADS if args.scratch else ())
        workloads = args.workloads.split(",") if args.workloads else list(default)
        for workload in workloads:
            if workload not in READ_WORKLOADS + WRITE_WORKLOADS:
                raise CommandError(f"unknown workload {workload!r}", code=2)
            if workload in WRITE_WORKLOADS and not args.scratch:
                raise CommandError(f"{workload} writes: name the sectors it may overwrite with --scratch "
                                   "START:COUNT", code=2)
        block = args.block_size // SECTOR
        if args.scratch and args.scratch[1] < block:
            raise CommandError(f"--scratch needs at least {block} sectors (one {args.block_size}-byte block)",
                               code=2)
        c_floor = None
        if args.compare_c_floor:  # built before connecting: a missing compiler or source is said at once
            try:
                c_floor = blk_cfloor.build(Path(args.c_floor_source) if args.c_floor_source else None)
            except blk_cfloor.CFloorError as exc:
                raise CommandError(str(exc)) from None
        return workloads, c_floor
    return None


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _info(client: BlkClient, args: argparse.Namespace, _prepared: None) -> int:
    features = client.features
    names = [name for bit, name in FEATURE_NAMES.items() if features & bit]
    names += [f.name or "" for f in Feature if features & f]
    queues, offered = len(client.queues), client.frontend.queue_num()
    if args.json:
        config = {key: value for key, value in vars(client.config).items() if not key.startswith("_")}
        print(json.dumps({"features": features, "feature_names": names, "queues_in_use": queues,
                          "queues_offered": offered, "config": config}, indent=2))
        return 0
    print(f"features: {features:#x} ({', '.join(names)})")
    print(f"queues in use: {queues} of {offered}")
    for key, value in client.config.describe():
        print(f"{key}: {value}")
    return 0


def _read(client: BlkClient, args: argparse.Namespace, _prepared: None) -> int:
    try:
        out: BinaryIO = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc.strerror}") from None
    try:
        step = 256
        for sector in range(args.sector, args.sector + args.count, step):
            out.write(client.read(sector, min(step, args.sector + args.count - sector)))
        out.flush()
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


def _write(client: BlkClient, args: argparse.Namespace, data: bytes) -> int:
    if client.read_only:
        raise CommandError("the disk is read-only")
    step = 256 * SECTOR
    for offset in range(0, len(data), step):
        client.write(args.sector + offset // SECTOR, data[offset:offset + step])
    client.flush()
    if not args.quiet:
        print(f"wrote {len(data) // SECTOR} sectors at {args.sector}", file=sys.stderr)
    return 0


def _blocks(start: int, count: int) -> list[tuple[int, int]]:
    """(sector, sectors) of the 4 KiB blocks covering ``count`` sectors from ``start`` (the last may be shorter)."""
    return [(s, min(BLOCK, start + count - s)) for s in range(start, start + count, BLOCK)]


def _failures(what: str, blocks: list[tuple[int, int]], results: list[Any]) -> str | None:
    """One line on the blocks whose request failed, or None."""
    failed = [(s, r) for (s, _n), r in zip(blocks, results) if isinstance(r, BlkError)]
    if not failed:
        return None
    return (f"verify: {len(failed)} of {len(blocks)} blocks failed to {what} ({failed[0][1]}), first at sector "
            f"{failed[0][0]}")


def _verify(client: BlkClient, args: argparse.Namespace, _prepared: None) -> int:
    if args.scratch:
        return _verify_scratch(client, *args.scratch)
    blocks = _blocks(args.sector, args.count)
    first = client.run([("read", s, n) for s, n in blocks])
    # A second pass in the opposite order (so over other queues and other ring slots) must read the same bytes.
    second = client.run([("read", s, n) for s, n in reversed(blocks)])[::-1]
    problem = _failures("read", blocks, first) or _failures("read", blocks, second)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    unstable = [s for (s, _n), a, b in zip(blocks, first, second) if a != b]
    if unstable:
        print(f"verify: {len(unstable)} of {len(blocks)} blocks read differently twice, first at sector "
              f"{unstable[0]}", file=sys.stderr)
        return 1
    print(f"verify: {len(blocks)} blocks read twice, identical (read only; --scratch START:COUNT writes a pattern "
          f"and reads it back)")
    return 0


def _verify_scratch(client: BlkClient, start: int, count: int) -> int:
    if client.read_only:
        raise CommandError("the disk is read-only: --scratch cannot write it")
    rng = random.Random(start)
    blocks = _blocks(start, count)
    patterns = [rng.randbytes(n * SECTOR) for _s, n in blocks]
    problem = _failures("write", blocks, client.run([("write", s, p) for (s, _n), p in zip(blocks, patterns)]))
    if problem is None:
        client.flush()
        got = client.run([("read", s, n) for s, n in blocks])
        problem = _failures("read back", blocks, got)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    bad = [s for (s, _n), want, have in zip(blocks, patterns, got) if want != have]
    if bad:
        print(f"verify: {len(bad)} of {len(blocks)} blocks differ, first at sector {bad[0]}", file=sys.stderr)
        return 1
    print(f"verify: {len(blocks)} blocks written and read back intact (sectors {start} to {start + count - 1})")
    return 0


def _bench(client: BlkClient, args: argparse.Namespace, prepared: tuple[list[str], Path | None]) -> int:
    workloads, c_floor = prepared
    if client.capacity < args.block_size // SECTOR:
        raise CommandError(f"the disk is smaller than {args.block_size} bytes")
    if args.scratch and any(w in WRITE_WORKLOADS for w in workloads) and client.read_only:
        raise CommandError("the disk is read-only: --scratch cannot write it")
    results: list[dict[str, Any]] = []
    try:
        for workload in workloads:
            results.append(_workload(client, args, workload))
        if c_floor is not None:
            client.frontend.close()  # one front-end at a time: many back-ends serve a single connection
            results += [_c_floor(client, args, workload, c_floor) for workload in workloads]
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr)
        _print_results(results)
        ours = sum(r["client"] == "vring" for r in results)
        print(f"vring blk bench: interrupted after {ours} of {len(workloads)} workloads", file=sys.stderr)
        return 130
    _print_results(results)
    print("data: " + (f"every read checked against the pattern of seed {args.pattern}" if args.pattern is not None
                      else "status bytes checked; reads not checked (no --pattern)"))
    if args.json:
        text = json.dumps({"socket": args.socket, "results": results, "vring_vs_c_floor": _ratios(results)},
                          indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    return 0


def _region(client: BlkClient, args: argparse.Namespace, workload: str) -> tuple[int, int]:
    """(first sector, sectors) a workload may use: reads anywhere on the disk, writes only in the scratch range."""
    if workload in WRITE_WORKLOADS:
        return args.scratch[0], args.scratch[1]
    return 0, client.capacity


def _workload(client: BlkClient, args: argparse.Namespace, workload: str) -> dict[str, Any]:
    """One workload for ``args.seconds`` with vring's client, in the C core."""
    if sys.stderr.isatty() and not args.quiet:  # rewritten in place: for a terminal only
        print(f"\r{workload}: {args.seconds:g} s ...", end="", file=sys.stderr, flush=True)
    first, count = _region(client, args, workload)
    result = client.stream(workload, depth=args.depth, block=args.block_size, seconds=args.seconds, first=first,
                           count=count, seed=args.pattern or 0, verify=args.pattern is not None)
    if sys.stderr.isatty() and not args.quiet:
        print("\r\033[K", end="", file=sys.stderr)
    return {"client": "vring", **result.as_dict()}


def _c_floor(client: BlkClient, args: argparse.Namespace, workload: str, binary: Path) -> dict[str, Any]:
    """The same workload with the C floor client, on the same back-end."""
    first, count = _region(client, args, workload)
    return blk_cfloor.run(args.socket, workload, queues=len(client.queues), depth=args.depth,
                          block=args.block_size, seconds=args.seconds, seed=args.pattern or 0,
                          verify=args.pattern is not None, first=first, count=count,
                          event_idx=not args.no_event_idx, timeout=args.timeout, binary=binary)


def _ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """Per workload: vring's client's IOPS over the C floor client's, where both ran."""
    ours = {r["workload"]: r["iops"] for r in results if r["client"] == "vring"}
    return {r["workload"]: ours[r["workload"]] / r["iops"] for r in results
            if r["client"] == "c-floor" and r["workload"] in ours and r["iops"]}


def _print_results(results: list[dict[str, Any]]) -> None:
    print(f"{'workload':<10} {'client':<8} {'queues':>6} {'depth':>5} {'IOPS':>10} {'MiB/s':>8} {'p50 us':>8} "
          f"{'p99 us':>8} {'max us':>8}")
    for r in results:
        print(f"{r['workload']:<10} {r['client']:<8} {r['queues']:>6} {r['depth']:>5} {r['iops']:>10,.0f} "
              f"{r['mib_s']:>8.1f} {r['lat_us_p50']:>8.0f} {r['lat_us_p99']:>8.0f} {r['lat_us_max']:>8.0f}")
    for workload, ratio in _ratios(results).items():
        print(f"{workload}: vring's client does {ratio:.2f}x the C floor client's IOPS")
