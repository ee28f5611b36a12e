"""`vring serve blk|rng`: serve a device to QEMU (or any vhost-user front-end) on a unix socket."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from vring.vhost_user import VhostUserBackend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", choices=["blk", "rng"])
    parser.add_argument("image", nargs="?", help="raw image file or block device (blk)")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--read-only", action="store_true", help="blk: offer VIRTIO_BLK_F_RO, refuse writes")
    parser.add_argument("--queues", type=int, default=1, help="blk: number of request queues")
    parser.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                        help="offer packed rings (on by default; the driver chooses)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: negotiation, -vv: every message")


def run(args: argparse.Namespace) -> int:
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
