"""`vring blk`: a virtio-blk client for any vhost-user-blk back-end (info, read, write, verify, bench)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

from vring.devices.blk import FEATURE_NAMES, SECTOR
from vring.drivers.blk import BlkClient, BlkError
from vring.vhost_user.frontend import BackendError, Frontend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", required=True, help="the back-end's unix socket")
    parser.add_argument("--queues", type=int, default=1, help="request queues to use")
    parser.add_argument("--queue-size", type=int, default=128)
    parser.add_argument("--no-event-idx", action="store_true", help="do not negotiate VIRTIO_F_EVENT_IDX")
    parser.add_argument("--no-indirect", action="store_true", help="do not negotiate VIRTIO_F_INDIRECT_DESC")
    parser.add_argument("--packed", action="store_true", help="negotiate packed rings (VIRTIO_F_RING_PACKED)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for any answer")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("info", help="negotiated features and the config space in words")
    read = sub.add_parser("read", help="read sectors to a file (default stdout)")
    read.add_argument("--sector", type=int, required=True)
    read.add_argument("--count", type=int, required=True)
    read.add_argument("--output", default="-")
    write = sub.add_parser("write", help="write a file (default stdin) at a sector, then flush")
    write.add_argument("--sector", type=int, required=True)
    write.add_argument("--input", default="-")
    verify = sub.add_parser("verify", help="write a pattern over a range, read it back, compare")
    verify.add_argument("--sector", type=int, default=0)
    verify.add_argument("--count", type=int, default=2048)
    bench = sub.add_parser("bench", help="fio-like 4 KiB workloads: IOPS, MiB/s, latency percentiles")
    bench.add_argument("--depth", type=int, default=32, help="requests in flight per queue")
    bench.add_argument("--seconds", type=float, default=3.0, help="length of each workload")
    bench.add_argument("--workloads", default="randread,randwrite,seqread")
    bench.add_argument("--json", metavar="PATH", help="write the figures as JSON ('-' for stdout)")


def _client(args: argparse.Namespace) -> BlkClient:
    frontend = Frontend(args.socket, timeout=args.timeout).connect()
    return BlkClient(frontend, queues=args.queues, queue_size=args.queue_size, event_idx=not args.no_event_idx,
                     indirect=not args.no_indirect, packed=args.packed)


def run(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
    except (BackendError, OSError, ValueError) as exc:
        print(f"vring blk: {exc}", file=sys.stderr)
        return 1
    try:
        return {"info": _info, "read": _read, "write": _write, "verify": _verify, "bench": _bench}[args.action](
            client, args)
    except (BlkError, BackendError, TimeoutError) as exc:
        print(f"vring blk: {exc}", file=sys.stderr)
        return 1
    finally:
        client.frontend.close()


def _info(client: BlkClient, _args: argparse.Namespace) -> int:
    from vring._features import Feature

    features = client.features
    names = [name for bit, name in FEATURE_NAMES.items() if features & bit]
    names += [f.name or "" for f in Feature if features & f]
    print(f"features: {features:#x} ({', '.join(names)})")
    print(f"queues in use: {len(client.queues)} of {client.frontend.queue_num()}")
    for key, value in client.config.describe():
        print(f"{key}: {value}")
    return 0


def _read(client: BlkClient, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")
    try:
        step = 256
        for sector in range(args.sector, args.sector + args.count, step):
            out.write(client.read(sector, min(step, args.sector + args.count - sector)))
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


def _write(client: BlkClient, args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.input == "-" else open(args.input, "rb").read()
    if len(data) % SECTOR:
        print(f"vring blk: {len(data)} bytes is not a multiple of {SECTOR}", file=sys.stderr)
        return 2
    step = 256 * SECTOR
    for offset in range(0, len(data), step):
        client.write(args.sector + offset // SECTOR, data[offset:offset + step])
    client.flush()
    print(f"wrote {len(data) // SECTOR} sectors at {args.sector}", file=sys.stderr)
    return 0


def _verify(client: BlkClient, args: argparse.Namespace) -> int:
    rng = random.Random(args.sector)
    ops = [("write", s, rng.randbytes(8 * SECTOR)) for s in range(args.sector, args.sector + args.count, 8)]
    client.run(ops)
    client.flush()
    got = client.run([("read", s, 8) for _, s, _ in ops])
    bad = [s for (_, s, want), have in zip(ops, got) if want != have]
    if bad:
        print(f"verify: {len(bad)} of {len(ops)} 4 KiB blocks differ, first at sector {bad[0]}", file=sys.stderr)
        return 1
    print(f"verify: {len(ops)} blocks of 4 KiB written and read back intact")
    return 0


def _bench(client: BlkClient, args: argparse.Namespace) -> int:
    blocks = client.capacity // 8
    if blocks < 1:
        print("vring blk bench: the disk is smaller than 4 KiB", file=sys.stderr)
        return 2
    results = []
    payload = os.urandom(4096)
    for workload in args.workloads.split(","):
        if workload not in ("randread", "randwrite", "seqread"):
            print(f"vring blk bench: unknown workload {workload}", file=sys.stderr)
            return 2
        if workload == "randwrite" and client.read_only:
            continue
        rng = random.Random(1)
        latencies: list[float] = []
        done = 0
        position = 0
        start = time.perf_counter()
        end = start + args.seconds
        while time.perf_counter() < end:
            chunk = 512
            if workload == "seqread":
                blocks_now = [(position + k) % blocks for k in range(chunk)]
                position += chunk
            else:
                blocks_now = [rng.randrange(blocks) for _ in range(chunk)]
            ops: list[tuple[str, int, Any]] = (
                [("write", 8 * b, payload) for b in blocks_now] if workload == "randwrite"
                else [("read", 8 * b, 8) for b in blocks_now])
            client.run(ops, depth=args.depth, latencies=latencies, keep_data=False)
            done += len(ops)
            print(f"\r{workload}: {done} requests", end="", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - start
        print("\r\033[K", end="", file=sys.stderr)
        latencies.sort()

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6

        results.append({"workload": workload, "queues": len(client.queues), "depth": args.depth,
                        "requests": done, "seconds": elapsed, "iops": done / elapsed,
                        "mib_s": done * 4096 / elapsed / 2**20, "lat_us_p50": pct(50), "lat_us_p99": pct(99),
                        "lat_us_p999": pct(99.9), "lat_us_max": latencies[-1] * 1e6})
    print(f"{'workload':<10} {'queues':>6} {'depth':>5} {'IOPS':>10} {'MiB/s':>8} {'p50 us':>8} {'p99 us':>8} "
          f"{'p99.9 us':>9} {'max us':>8}")
    for r in results:
        print(f"{r['workload']:<10} {r['queues']:>6} {r['depth']:>5} {r['iops']:>10,.0f} {r['mib_s']:>8.1f} "
              f"{r['lat_us_p50']:>8.0f} {r['lat_us_p99']:>8.0f} {r['lat_us_p999']:>9.0f} {r['lat_us_max']:>8.0f}")
    if args.json:
        text = json.dumps({"socket": args.socket, "results": results}, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    return 0
