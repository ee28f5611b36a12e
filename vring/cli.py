"""The ``vring`` command."""

from __future__ import annotations

import argparse
import platform
import sys
import sysconfig
from typing import Sequence


def _info(_args: argparse.Namespace) -> int:
    import vring
    from vring._features import ENGINE_FEATURES, Feature

    print(f"vring {vring.__version__}")
    print(f"implementation: {vring.IMPLEMENTATION}")
    print(f"python: {platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
    names = [f.name for f in Feature if f & ENGINE_FEATURES and f.name]
    print("ring layouts: split, packed")
    print(f"engine features: {', '.join(names)} ({int(ENGINE_FEATURES):#x})")
    try:
        from vring import _cring
    except ImportError as exc:
        print(f"compiled core: not available ({exc})")
    else:
        print(f"compiled core: {_cring.__file__}")
        print(f"compiler: {_cring.COMPILER}")
        base = " ".join(str(sysconfig.get_config_var(v) or "") for v in ("CC", "CFLAGS")).split()
        print(f"compiler flags: {' '.join(base)} {_cring.BUILD_CFLAGS}")
    return 0


def _demo(_args: argparse.Namespace) -> int:
    from vring.demo import main as demo

    return demo()


def _bench(args: argparse.Namespace) -> int:
    from vring.bench import run

    return run(args)


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from vring.vhost_user import VhostUserBackend

    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else
                        logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.device == "blk":
        if not args.image:
            print("vring serve blk: an IMAGE is needed", file=sys.stderr)
            return 2
        from vring.devices.blk import BlkDevice

        BlkDevice(args.image, read_only=args.read_only, num_queues=args.queues).close()  # fail early on a bad image

        def factory():
            device = BlkDevice(args.image, read_only=args.read_only, num_queues=args.queues)
            device.offer_packed = args.packed
            return device
    else:
        from vring.devices.rng import RngDevice

        def factory():
            device = RngDevice()
            device.offer_packed = args.packed
            return device
    backend = VhostUserBackend(factory, args.socket)
    backend.listen()

    def stop(signum, _frame):
        logging.getLogger("vring").info("signal %d: stopping", signum)
        backend.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"vring: serving virtio-{args.device} on {args.socket}", file=sys.stderr, flush=True)
    backend.serve_forever()
    return 0


def _blk(args: argparse.Namespace) -> int:
    from vring.blk_cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vring", description="virtio virtqueues for Python")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, engine implementation, supported features, build flags")
    info.set_defaults(func=_info)
    demo = sub.add_parser("demo", help="a driver and a device exchanging one request")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="requests/s of each API and twin, against the C floor")
    from vring.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=_bench)
    serve = sub.add_parser("serve", help="serve a device to QEMU over vhost-user")
    serve.add_argument("device", choices=["blk", "rng"])
    serve.add_argument("image", nargs="?", help="raw image file or block device (blk)")
    serve.add_argument("--socket", required=True, help="unix socket path to listen on")
    serve.add_argument("--read-only", action="store_true", help="blk: offer VIRTIO_BLK_F_RO, refuse writes")
    serve.add_argument("--queues", type=int, default=1, help="blk: number of request queues")
    serve.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                       help="offer packed rings (on by default; the driver chooses)")
    serve.add_argument("-v", "--verbose", action="count", default=0, help="-v: negotiation, -vv: every message")
    serve.set_defaults(func=_serve)
    blk = sub.add_parser("blk", help="a virtio-blk client of any vhost-user-blk back-end")
    from vring.blk_cli import add_arguments as blk_arguments

    blk_arguments(blk)
    blk.set_defaults(func=_blk)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
