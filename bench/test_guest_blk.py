"""vring's vhost-user-blk back-end against qemu-storage-daemon, seen from a Linux guest under QEMU (TCG): the
time from starting QEMU to the guest powering off, and the guest's `dd` read throughput over the whole disk.
One round each: the figures go into extra_info (boot_s, read_mib_s); pytest-benchmark's time is the whole boot."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from support import guest
from support.backends import BACKENDS

IMAGE_MIB = 128
# busybox date has no nanoseconds: /proc/uptime gives centiseconds, enough for a read of a second or so.
SCRIPT = """
start=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null
end=$(cut -d' ' -f1 /proc/uptime)
echo "read_s=$start $end"
"""


@pytest.mark.benchmark(group="guest blk: boot to poweroff, dd of the whole disk", min_rounds=1, warmup=False)
@pytest.mark.parametrize("backend", ["vring", "qsd"])
def test_guest_boot_and_read(benchmark, kernel: Path, tmp_path: Path, backend: str) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(IMAGE_MIB << 20))
    initrd = guest.build_initramfs(tmp_path / "initrd.gz", SCRIPT)
    sock = tmp_path / f"{backend}.sock"
    with BACKENDS[backend](image, sock, queues=1):
        def boot() -> guest.GuestResult:
            return guest.run_guest(kernel, initrd, ["-chardev", f"socket,id=c0,path={sock}",
                                                    "-device", "vhost-user-blk-pci,chardev=c0"], timeout_s=180)
        result = benchmark.pedantic(boot, rounds=1, iterations=1)
    assert result.exit_code == 0, result.console + result.stderr
    start, end = map(float, re.search(r"read_s=([\d.]+) ([\d.]+)", result.output).groups())
    read_mib_s = IMAGE_MIB / max(end - start, 0.01)
    benchmark.extra_info["boot_s"] = result.duration_s
    benchmark.extra_info["read_mib_s"] = read_mib_s
    print(f"{backend}: boot-to-poweroff {result.duration_s:.2f} s, dd of {IMAGE_MIB} MiB at {read_mib_s:.0f} MiB/s")
