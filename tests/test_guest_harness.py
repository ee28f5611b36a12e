"""The guest harness (guest.py), proved on QEMU's own virtio-blk: Linux's driver reads and writes a disk image."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Sequence

import pytest

from support import guest

IMAGE_SIZE = 4 << 20
PATTERN = b"vring-guest-pattern"
OFFSET = (1 << 20) + 123  # not block-aligned: the guest kernel must read, modify and write back a block

DISK_SCRIPT = f"""
sha256sum /dev/vda
echo "queues=$(ls /sys/block/vda/mq | wc -l)"
printf '{PATTERN.decode()}' | dd of=/dev/vda bs=1 seek={OFFSET} conv=notrunc,fsync 2>/dev/null
sync
"""


def boot(
    kernel: Path, tmp_path: Path, script: str, qemu_args: Sequence[str] = (), smp: int = 1, timeout_s: float = 120
) -> guest.GuestResult:
    initrd = guest.build_initramfs(tmp_path / "initrd.gz", script)
    result = guest.run_guest(kernel, initrd, qemu_args, timeout_s=timeout_s, smp=smp)
    print(f"guest ran {result.duration_s:.1f} s")
    return result


# The guest driver uses at most one queue per vCPU: two vCPUs either share one queue or have one each.
@pytest.mark.parametrize(
    "smp, device_options, queues",
    [(1, "", 1), (2, ",num-queues=1", 1), (2, ",num-queues=2", 2)],
    ids=["smp1", "smp2-one-queue", "smp2-two-queues"],
)
def test_virtio_blk_reads_and_writes_the_image(
    kernel: Path, tmp_path: Path, smp: int, device_options: str, queues: int
) -> None:
    image = tmp_path / "disk.img"
    original = random.Random(7).randbytes(IMAGE_SIZE)
    image.write_bytes(original)
    drive = ["-drive", f"file={image},if=none,id=d0,format=raw", "-device", f"virtio-blk-pci,drive=d0{device_options}"]

    result = boot(kernel, tmp_path, DISK_SCRIPT, drive, smp=smp)

    assert result.exit_code == 0, result.console + result.stderr
    assert re.search(rf"^{hashlib.sha256(original).hexdigest()}  /dev/vda$", result.output, re.M), result.console
    assert f"queues={queues}\n" in result.output
    expected = bytearray(original)
    expected[OFFSET : OFFSET + len(PATTERN)] = PATTERN
    assert image.read_bytes() == expected


def test_a_failing_command_fails_the_guest(kernel: Path, tmp_path: Path) -> None:
    result = boot(kernel, tmp_path, "echo before\nfalse\necho after\n")
    assert result.exit_code == 1, result.console + result.stderr
    assert result.output == "before\n"


def test_a_hung_guest_is_stopped_at_the_timeout(kernel: Path, tmp_path: Path) -> None:
    result = boot(kernel, tmp_path, "sleep 600\n", timeout_s=4)
    assert result.exit_code is None
    assert result.returncode == 124  # coreutils timeout's "timed out"
    assert result.duration_s < 15
