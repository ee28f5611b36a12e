"""`vring serve blk|rng`: serve a device to QEMU (or any vhost-user front-end) on a unix socket."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from vring.vhost_user import ListenError, VhostUserBackend

from ._args import CommandError, int_range

EXAMPLES = """examples:
  vring serve blk disk.img --socket /tmp/blk.sock
  vring serve blk disk.img --socket /tmp/blk.sock --read-only --queues 4
  vring serve rng --socket /tmp/rng.sock -v

The image is locked while it is served (shared with --read-only, exclusive otherwise), as qemu-storage-daemon
locks it: a second writer on the same image is refused."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vring.devices.blk import MAX_QUEUES

    parser.add_argument("device", choices=["blk", "rng"], help="the device to serve")
    parser.add_argument("image", nargs="?", help="blk: raw image file or block device (a multiple of 512 bytes)")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--read-only", action="store_true",
                        help="blk: open the image read-only, offer VIRTIO_BLK_F_RO, refuse writes")
    parser.add_argument("--queues", type=int_range(1, MAX_QUEUES), default=1,
                        help=f"blk: number of request queues, 1 to {MAX_QUEUES} (default 1)")
    parser.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                        help="offer packed rings (on by default; the driver chooses)")


def run(args: argparse.Namespace) -> int:
    if args.device == "blk":
        if not args.image:
            raise CommandError("blk needs an IMAGE", code=2)
        from vring.devices.blk import BlkDevice
        from vring.devices.image import Image, ImageError

        try:
            image = Image(args.image, read_only=args.read_only)  # opened once: every connection shares it
        except ImageError as exc:
            raise CommandError(str(exc)) from None

        def factory():
            device = BlkDevice(image, num_queues=args.queues)
            device.offer_packed = args.packed
            return device
    else:
        if args.image:
            raise CommandError(f"rng takes no IMAGE (got {args.image})", code=2)
        image = None
        from vring.devices.rng import RngDevice

        def factory():
            device = RngDevice()
            device.offer_packed = args.packed
            return device
    try:
        backend = VhostUserBackend(factory, args.socket)
        try:
            backend.listen()
        except ListenError as exc:  # a live server or a file that is not a socket: the user named the wrong path
            raise CommandError(str(exc), code=2) from None
        except OSError as exc:
            raise CommandError(f"cannot listen on {args.socket}: {exc.strerror or exc}") from None

        def stop(signum, _frame):
            logging.getLogger("vring").info("signal %d: stopping", signum)
            backend.stop()

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, stop)
        if not args.quiet:
            print(f"vring: serving virtio-{args.device} on {args.socket}", file=sys.stderr, flush=True)
        backend.serve_forever()
    finally:
        if image is not None:
            image.close()
    return 0
