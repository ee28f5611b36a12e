"""`vring serve blk|rng`: serve a device to QEMU (or any vhost-user front-end) on a unix socket, listening on it
or connecting to a front-end that listens (client mode)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys

from vring.vhost_user import ListenError, VhostUserBackend
from vring.vhost_user.server import ConnectError

from ._args import CommandError, int_range

EXAMPLES = """examples:
  vring serve blk disk.img --socket /tmp/blk.sock
  vring serve blk disk.img --socket /tmp/blk.sock --read-only --queues 4
  vring serve blk disk.img --socket /tmp/blk.sock --queues 4 --aio io_uring --cache none
  vring serve blk disk.img --socket /run/vm/blk.sock --socket-mode 0660 --socket-group kvm
  vring serve blk disk.img --socket-fd 3           # a listening socket from systemd or libvirt
  vring serve rng --socket /tmp/rng.sock -v
  vring serve blk disk.img --connect /tmp/qemu-blk.sock  # client mode: QEMU listens (server=on,wait=off)

In client mode the back-end connects to the front-end's socket, serves that connection and, when it ends or
cannot be made, connects again (at most once every --reconnect-delay seconds; 0: a single attempt, whose failure
is an error). SIGTERM, SIGINT and SIGHUP stop it cleanly in either mode.

With NOTIFY_SOCKET set (systemd Type=notify), READY=1 is sent once the socket listens (client mode: after the
first connection attempt, whether or not it succeeded).

The image is locked while it is served (shared with --read-only, exclusive otherwise), as qemu-storage-daemon
locks it: a second writer on the same image is refused."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vring.devices.blk import MAX_QUEUES

    parser.add_argument("device", choices=["blk", "rng"], help="the device to serve")
    parser.add_argument("image", nargs="?", help="blk: raw image file or block device (a multiple of 512 bytes)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="unix socket path to listen on")
    where.add_argument("--socket-fd", type=int_range(0), metavar="FD",
                       help="serve on this already bound, listening unix socket (socket activation)")
    where.add_argument("--connect", metavar="PATH",
                       help="client mode: connect to the front-end listening on this unix socket, and reconnect")
    parser.add_argument("--reconnect-delay", type=delay_seconds, metavar="SECONDS",
                        help="with --connect: seconds between connection attempts (default 1; 0: no retry)")
    parser.add_argument("--socket-mode", type=octal_mode, metavar="MODE",
                        help="permission bits of the socket file, in octal (e.g. 0660; default from the umask)")
    parser.add_argument("--socket-group", type=group_id, metavar="GROUP",
                        help="group of the socket file, a name or a number (e.g. the group QEMU runs as)")
    parser.add_argument("--serial", type=serial_number, help="blk: the serial number the guest reads (up to 20 "
                        "bytes; default the image's file name)")
    parser.add_argument("--logical-block-size", type=block_size, default=512, metavar="BYTES",
                        help="blk: the logical block size offered, a power of two from 512 to 65536 (default 512)")
    parser.add_argument("--read-only", action="store_true",
                        help="blk: open the image read-only, offer VIRTIO_BLK_F_RO, refuse writes")
    parser.add_argument("--queues", type=int_range(1, MAX_QUEUES), default=1,
                        help=f"blk: number of request queues, 1 to {MAX_QUEUES} (default 1)")
    parser.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                        help="offer packed rings (on by default; the driver chooses)")
    parser.add_argument("--aio", choices=["io_uring", "threads", "sync"],
                        help="blk: how requests reach the image: io_uring, a thread pool, or synchronously in each "
                             "queue's worker (default io_uring where it works, else threads)")
    parser.add_argument("--cache", choices=["writeback", "none"], default="writeback",
                        help="blk: writeback goes through the page cache (default); none opens the image with "
                             "O_DIRECT")
    parser.add_argument("--queues-per-thread", type=int_range(1, MAX_QUEUES), default=1, metavar="K",
                        help="blk: queues served by one worker thread (default 1: a thread per queue)")


def octal_mode(text: str) -> int:
    """An argparse type: permission bits in octal, 0 to 0777."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text} is not a mode from 0 to 0777")
    return mode


def delay_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds, 0 or more")
    return value


def group_id(text: str) -> int:
    """An argparse type: a group name or number, as its number."""
    import grp

    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no group named {text!r}") from None


def serial_number(text: str) -> str:
    """An argparse type: what GET_ID answers, at most 20 bytes (virtio-blk's VIRTIO_BLK_ID_BYTES)."""
    if len(text.encode()) > 20:
        raise argparse.ArgumentTypeError(f"{text!r} is {len(text.encode())} bytes, more than 20")
    return text


def block_size(text: str) -> int:
    """An argparse type: a logical block size, a power of two from 512 to 65536."""
    size = int_range(512, 65536)(text)
    if size & (size - 1):
        raise argparse.ArgumentTypeError(f"{size} is not a power of two")
    return size


def notify_ready(status: str) -> None:
    """Tell a service manager the socket listens (sd_notify's READY=1), if it asked through NOTIFY_SOCKET."""
    import os
    import socket

    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    message = f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}".encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.sendto(message, address)
    except OSError as exc:
        logging.getLogger("vring").warning("NOTIFY_SOCKET %s: readiness not sent: %s", address, exc)


def run(args: argparse.Namespace) -> int:
    usage_checks(args)
    if args.device == "blk":
        if not args.image:
            raise CommandError("blk needs an IMAGE", code=2)
        from vring.devices.blk import BlkDevice
        from vring.devices.image import Image, ImageError

        try:
            image = Image(args.image, read_only=args.read_only)  # opened once: every connection shares it
        except ImageError as exc:
            raise CommandError(str(exc)) from None

        if image.size % args.logical_block_size:
            image.close()
            raise CommandError(f"{args.image} is {image.size} bytes, not a multiple of the logical block size "
                               f"{args.logical_block_size}")
        from vring.devices.blk_executor import AIO_DESCRIPTIONS, choose_aio, open_direct

        try:
            aio, why = choose_aio(args.aio)
            if args.cache == "none":
                os.close(open_direct(image.fd, args.image, image.read_only))  # refused now rather than per guest
        except ImageError as exc:
            image.close()
            raise CommandError(str(exc)) from None
        started = f"block I/O by {AIO_DESCRIPTIONS[aio]}, cache {args.cache}" + (f" ({why})" if why else "")

        def factory():
            device = BlkDevice(image, num_queues=args.queues, serial=args.serial,
                               logical_block_size=args.logical_block_size, aio=aio, cache=args.cache)
            device.offer_packed = args.packed
            device.queues_per_thread = args.queues_per_thread
            return device
    else:
        if args.image:
            raise CommandError(f"rng takes no IMAGE (got {args.image})", code=2)
        image = None
        started = ""
        from vring.devices.rng import RngDevice

        def factory():
            device = RngDevice()
            device.offer_packed = args.packed
            return device
    try:
        backend = VhostUserBackend(factory, args.socket or args.connect or "")

        def stop(signum, _frame):
            # No lock here, not even logging's: this may interrupt the main thread while it holds one.
            backend.stop_from_signal(signum)

        # Before the socket exists: a supervisor may signal us as soon as it sees the socket, and the server must
        # then stop cleanly (and remove its socket), not die of the signal's default action.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, stop)
        if args.connect is not None:
            connect(backend, args)
            where = f"the front-end at {backend.path} (client mode)"
        else:
            listen(backend, args)
            where = backend.path
        if not args.quiet:
            if started:
                print(f"vring: {started}", file=sys.stderr, flush=True)
            print(f"vring: serving virtio-{args.device} on {where}", file=sys.stderr, flush=True)
        notify_ready(f"serving virtio-{args.device} on {where}")
        backend.serve_forever()
    finally:
        if image is not None:
            image.close()
    return 0


def usage_checks(args: argparse.Namespace) -> None:
    """Options that do not apply to the mode chosen are a usage error, not silently ignored."""
    if args.reconnect_delay is not None and args.connect is None:
        raise CommandError("--reconnect-delay applies to --connect (client mode) only", code=2)
    if args.socket is None and (args.socket_mode is not None or args.socket_group is not None):
        what = "--socket-fd" if args.socket_fd is not None else "--connect"
        raise CommandError(f"--socket-mode and --socket-group apply to a socket vring creates, not to {what}", code=2)


def listen(backend: VhostUserBackend, args: argparse.Namespace) -> None:
    try:
        if args.socket_fd is not None:
            backend.adopt(args.socket_fd)
        else:
            backend.listen(args.socket_mode, args.socket_group)
    except ListenError as exc:  # a live server or a file that is not a socket: the user named the wrong path
        raise CommandError(str(exc), code=2) from None
    except OSError as exc:
        raise CommandError(f"cannot listen on {backend.path}: {exc.strerror or exc}") from None


def connect(backend: VhostUserBackend, args: argparse.Namespace) -> None:
    delay = 1.0 if args.reconnect_delay is None else args.reconnect_delay
    try:
        backend.connect(reconnect_delay=delay)
    except ConnectError as exc:  # no retry asked for: the first failure is the answer
        raise CommandError(str(exc), code=2 if exc.errno == errno.ENOTSOCK else 1) from None
