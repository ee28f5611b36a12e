"""A Linux guest under QEMU uses devices served by vring over vhost-user: its own virtio_blk driver reads the whole
disk and writes to it, and its virtio_rng driver draws entropy, with the data checked on both sides."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from support import guest
from support.backends import vring_blk

IMAGE_SIZE = 8 << 20
PATTERN = (b"vring-guest-write-" * 300)[:4096]
PATTERN_SECTOR = 2048  # at 1 MiB


def disk_script(read_only: bool) -> str:
    write = (f"if dd if=/tmp/pattern of=/dev/vda bs=4096 seek={PATTERN_SECTOR // 8} conv=fsync 2>/dev/null; "
             "then echo write=ok; else echo write=refused; fi")
    return f"""
sha256sum /dev/vda
echo "queues=$(ls /sys/block/vda/mq | wc -l)"
echo "ro=$(cat /sys/block/vda/ro)"
printf '{PATTERN.decode()}' > /tmp/pattern
{write}
sync
"""


CASES = {
    "1-queue": dict(queues=1, smp=1, options=""),
    "2-queues": dict(queues=2, smp=2, options=""),
    "read-only": dict(queues=1, smp=1, options="", read_only=True),
    "no-indirect": dict(queues=1, smp=1, options=",indirect_desc=off"),
    "no-event-idx": dict(queues=1, smp=1, options=",event_idx=off"),
    "packed": dict(queues=1, smp=1, options=",packed=on"),
    "packed-2-queues-no-indirect": dict(queues=2, smp=2, options=",packed=on,indirect_desc=off"),
    # The back-end's other I/O paths (the cases above use the default, io_uring with the page cache).
    "2-queues-aio-threads-cache-none": dict(queues=2, smp=2, options="", extra=("--aio", "threads", "--cache", "none")),
    "aio-sync-one-worker-for-2-queues": dict(queues=2, smp=2, options=",packed=on",
                                             extra=("--aio", "sync", "--queues-per-thread", "2")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_guest_reads_and_writes_a_vring_disk(kernel: Path, tmp_path: Path, case: str) -> None:
    params = CASES[case]
    read_only = params.get("read_only", False)
    image = tmp_path / "disk.img"
    original = os.urandom(IMAGE_SIZE)
    image.write_bytes(original)
    sock = tmp_path / "blk.sock"
    initrd = guest.build_initramfs(tmp_path / "initrd.gz", disk_script(read_only))
    with vring_blk(image, sock, queues=params["queues"], read_only=read_only, extra=params.get("extra", ())):
        result = guest.run_guest(kernel, initrd, [
            "-chardev", f"socket,id=c0,path={sock}",
            "-device", f"vhost-user-blk-pci,chardev=c0,num-queues={params['queues']}{params['options']}",
        ], smp=params["smp"], timeout_s=120)
    log = sock.with_suffix(".log").read_text()
    assert result.exit_code == 0, result.console + result.stderr + log
    assert re.search(rf"^{hashlib.sha256(original).hexdigest()}  /dev/vda$", result.output, re.M), result.output
    assert f"queues={params['queues']}\n" in result.output
    expected = bytearray(original)
    if read_only:
        assert "ro=1\n" in result.output and "write=refused\n" in result.output
    else:
        assert "ro=0\n" in result.output and "write=ok\n" in result.output
        expected[PATTERN_SECTOR * 512:PATTERN_SECTOR * 512 + len(PATTERN)] = PATTERN
    assert image.read_bytes() == expected
    # What the back-end saw: the guest's features, and (SeaBIOS, then Linux) rings started and stopped cleanly.
    negotiated = [int(m, 16) for m in re.findall(r"features (0x[0-9a-f]+) negotiated", log)]
    assert negotiated, log
    linux = negotiated[-1]
    assert bool(linux & (1 << 28)) == ("indirect_desc=off" not in params["options"])  # VIRTIO_F_INDIRECT_DESC
    assert bool(linux & (1 << 29)) == ("event_idx=off" not in params["options"])  # VIRTIO_F_EVENT_IDX
    assert bool(linux & (1 << 34)) == ("packed=on" in params["options"])  # VIRTIO_F_RING_PACKED
    if "packed=on" in params["options"]:
        assert "started (packed)" in log
    assert "protocol error" not in log and "Traceback" not in log, log


def test_guest_draws_entropy_from_vring_rng(kernel: Path, tmp_path: Path) -> None:
    sock = tmp_path / "rng.sock"
    script = """
cat /sys/class/misc/hw_random/rng_current
head -c 4096 /dev/hwrng > /tmp/random
wc -c < /tmp/random
head -c 4096 /dev/hwrng | sha256sum
"""
    initrd = guest.build_initramfs(tmp_path / "initrd.gz", script, modules=guest.VIRTIO_RNG_MODULES)
    with vring_blk(tmp_path, sock, device="rng"):
        result = guest.run_guest(kernel, initrd, ["-chardev", f"socket,id=r0,path={sock}",
                                                  "-device", "vhost-user-rng-pci,chardev=r0"], timeout_s=120)
    log = sock.with_suffix(".log").read_text()
    assert result.exit_code == 0, result.console + result.stderr + log
    assert result.output.startswith("virtio_rng"), result.output
    assert "\n4096\n" in result.output
