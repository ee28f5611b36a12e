"""Boot a real Linux guest under QEMU (TCG, no KVM) for integration tests.

The guest is Debian's stock kernel with a tiny initramfs built here: a static busybox, the virtio modules a test
names, and an /init that runs one shell script, prints ``VRING-GUEST-EXIT=<code>`` on the serial console and powers
off. Guest RAM is a shared memfd, as a vhost-user backend needs to map it. Typical use:

    kernel = extract_vmlinux(find_kernel(), tmp / "vmlinux")  # once: boots in 2 s instead of 5
    initrd = build_initramfs(tmp / "initrd.gz", "sha256sum /dev/vda", VIRTIO_BLK_MODULES)
    result = run_guest(kernel, initrd, ["-drive", ..., "-device", "virtio-blk-pci,..."])
    assert result.exit_code == 0, result.console

Needs the Debian packages that scripts/install-guest-deps.sh installs.
"""

from __future__ import annotations

import functools
import gzip
import io
import lzma
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

START_MARKER = "VRING-GUEST-START"
EXIT_MARKER = "VRING-GUEST-EXIT="
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"

# Load order matters: busybox insmod does not resolve dependencies, so each module follows the ones it needs.
VIRTIO_PCI_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci")
VIRTIO_BLK_MODULES = VIRTIO_PCI_MODULES + ("virtio_blk",)
VIRTIO_RNG_MODULES = VIRTIO_PCI_MODULES + ("virtio_rng",)


@dataclass(frozen=True)
class GuestResult:
    exit_code: Optional[int]  # the guest script's exit status; None if the marker never appeared (crash, timeout)
    console: str  # everything the guest wrote to its serial console
    duration_s: float  # from starting QEMU to its exit
    returncode: int  # QEMU's own, under coreutils timeout: 124 means the guest was killed for taking too long
    stderr: str  # QEMU's diagnostics (a bad -device option, a missing disk image)

    @property
    def output(self) -> str:
        """What /init and the script printed, without the firmware's banner before it and the exit marker after."""
        rest = self.console.partition(START_MARKER + "\n")[2]
        return rest.rpartition(EXIT_MARKER)[0] if EXIT_MARKER in rest else rest


def find_kernel() -> Path:
    """The newest /boot/vmlinuz-* that has its modules in /lib/modules (the host's running kernel may not)."""
    kernels = [p for p in Path("/boot").glob("vmlinuz-*") if (_modules_dir(kernel_release(p)) / "kernel").is_dir()]
    if not kernels:
        raise FileNotFoundError("no /boot/vmlinuz-* with its /lib/modules: run scripts/install-guest-deps.sh")
    return max(kernels, key=lambda p: _version_key(kernel_release(p)))


def kernel_release(kernel: Optional[Path] = None) -> str:
    """The release of ``kernel`` (default: find_kernel()), which names its /lib/modules/<release> directory."""
    kernel = kernel if kernel is not None else find_kernel()
    return kernel.name[len("vmlinuz-"):]


def extract_vmlinux(kernel: Path, dest: Path) -> Path:
    """Write the uncompressed ELF kernel inside the bzImage ``kernel`` to ``dest`` and return ``dest``.

    Under TCG, QEMU boots this ELF through its PVH entry point in about 2 s, against 5 s for the bzImage, whose
    BIOS stage and self-decompression are slow to emulate. Needs a kernel built with CONFIG_PVH, as Debian's is.
    """
    data = kernel.read_bytes()
    if data[0x202:0x206] != b"HdrS":
        raise ValueError(f"{kernel} is not a bzImage")
    # The x86 boot protocol: the compressed payload's offset (from the end of the real-mode setup) and length.
    setup_sectors = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    payload = data[start : start + length]
    # One stream each: the payload may end with bytes that are not part of it (the kernel's size).
    if payload.startswith(b"\xfd7zXZ\x00"):
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        elf = zlib.decompressobj(wbits=31).decompress(payload)
    else:
        raise ValueError(f"{kernel}: payload compressed with neither xz nor gzip (starts {payload[:4].hex()})")
    dest.write_bytes(elf)
    return dest


def build_initramfs(
    dest: Path, script: str, modules: Sequence[str] = VIRTIO_BLK_MODULES, release: Optional[str] = None,
    files: Optional[Mapping[str, bytes]] = None,
) -> Path:
    """Write to ``dest`` a gzip'd newc cpio that boots into ``script`` and returns ``dest``.

    The script runs under ``sh -e`` (a failing command fails the guest) with busybox's applets on PATH, after
    ``modules`` are loaded in the given order. Modules built into the kernel are skipped; a module this kernel does
    not have at all is skipped with a warning (older kernels lack some of the split virtio_pci modules). ``files``
    (name in the root directory -> contents) are added for the script to read.
    """
    release = release if release is not None else kernel_release()
    _check_static(BUSYBOX)
    archive = _Cpio()
    for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        archive.directory(directory)
    # The kernel opens /dev/console for init's stdin/stdout before devtmpfs is mounted: without the node, init
    # would run with no output at all.
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")

    loaded = []
    for name in modules:
        path = _find_module(name, release)
        if path is not None:
            archive.file(f"lib/modules/{name}.ko", _read_module(path), 0o644)
            loaded.append(name)
    for name, data in (files or {}).items():
        archive.file(name, data, 0o644)
    archive.file("script", script.encode(), 0o755)
    archive.file("init", _init_script(loaded).encode(), 0o755)

    dest.write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))
    return dest


def qemu_command(kernel: Path, initrd: Path, extra_args: Sequence[str] = (), memfd_mem_mb: int = 256, smp: int = 1,
                 kernel_args: Sequence[str] = ()) -> list[str]:
    """The QEMU command line of a test guest (README's "Connect it to QEMU" shows the same options)."""
    mem = f"{memfd_mem_mb}M"
    return [
        QEMU,
        "-accel", "tcg",
        "-machine", "q35",
        "-m", mem,
        "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
        "-numa", "node,memdev=mem",
        "-smp", str(smp),
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", " ".join(("console=ttyS0 quiet panic=-1", *kernel_args)),
        # -nodefaults drops the VGA card, the NIC and the CD-ROM (less to emulate, less for the guest to probe);
        # the one serial port stays as the guest's console.
        "-nodefaults", "-nographic", "-no-reboot",
        "-serial", "stdio", "-monitor", "none", "-display", "none",
        *extra_args,
    ]  # fmt: skip


def run_guest(
    kernel: Path,
    initrd: Path,
    extra_args: Sequence[str] = (),
    timeout_s: float = 120,
    memfd_mem_mb: int = 256,
    smp: int = 1,
    kernel_args: Sequence[str] = (),
) -> GuestResult:
    """Boot ``kernel`` with ``initrd`` and ``extra_args`` (devices, drives, chardevs) and wait for it to power off.

    A hung guest cannot hang the caller: coreutils timeout stops QEMU after ``timeout_s``, and should that fail,
    a Python-side timeout a little later kills the whole process group.
    """
    command = ["timeout", "--kill-after=5", str(timeout_s),
               *qemu_command(kernel, initrd, extra_args, memfd_mem_mb, smp, kernel_args)]
    start = time.monotonic()
    # A session of its own, so that the fallback kill reaches QEMU and not just the timeout process above it.
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s + 15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    duration = time.monotonic() - start

    console = out.decode(errors="replace").replace("\r\n", "\n")
    return GuestResult(
        exit_code=exit_code_of(console),
        console=console,
        duration_s=duration,
        returncode=proc.returncode,
        stderr=err.decode(errors="replace"),
    )


def exit_code_of(console: str) -> Optional[int]:
    """The guest script's exit status its console reports; None if the exit marker never appeared."""
    # The last marker wins: the script itself may well have printed the marker text earlier.
    codes = re.findall(rf"{EXIT_MARKER}(\d+)", console)
    return int(codes[-1]) if codes else None


def missing_prerequisites() -> list[str]:
    """What of QEMU, a kernel with modules and a static busybox this machine lacks (empty: guests can boot)."""
    missing = []
    for tool in (QEMU, "timeout"):
        if shutil.which(tool) is None:
            missing.append(tool)
    try:
        find_kernel()
    except FileNotFoundError:
        missing.append("a kernel in /boot with its /lib/modules")
    if not BUSYBOX.is_file():
        missing.append(str(BUSYBOX))
    return missing


def _init_script(modules: Sequence[str]) -> str:
    loads = "\n".join(f"insmod /lib/modules/{name}.ko || fail 'insmod {name}'" for name in modules)
    # The firmware's banner ends without a newline: the start marker begins with one.
    return f"""#!/bin/sh
echo; echo {START_MARKER}
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# A failure before the script still ends with a marker, so the host reports it instead of waiting for a timeout.
fail() {{ echo "vring-guest: $1 failed"; echo "{EXIT_MARKER}125"; poweroff -f; }}
{loads}
sh -e /script
code=$?
sync
echo "{EXIT_MARKER}$code"
poweroff -f
"""


def _modules_dir(release: str) -> Path:
    return Path("/lib/modules") / release


def _version_key(release: str) -> list:
    # Natural order, so that 6.1.0-10 sorts after 6.1.0-9.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", release)]


def _module_name(filename: str) -> str:
    # The kernel treats - and _ in module names alike (virtio-rng.ko is the module virtio_rng).
    return re.sub(r"\.ko(\.\w+)?$", "", filename).replace("-", "_")


def _find_module(name: str, release: str) -> Optional[Path]:
    """The module file of ``name``, or None if it is built into the kernel or this kernel has no such module."""
    name = name.replace("-", "_")
    loadable, builtin = _module_index(release)
    if name in loadable:
        return loadable[name]
    if name in builtin:
        return None
    warnings.warn(f"kernel {release} has no module {name}, neither loadable nor built in: not loading it")
    return None


@functools.lru_cache(maxsize=None)
def _module_index(release: str) -> tuple[dict[str, Path], frozenset[str]]:
    """The kernel's loadable modules by name, and the names of those built into it."""
    root = _modules_dir(release)
    loadable = {_module_name(path.name): path for path in (root / "kernel").rglob("*.ko*")}
    builtin_list = root / "modules.builtin"
    lines = builtin_list.read_text().split() if builtin_list.is_file() else []
    return loadable, frozenset(_module_name(Path(line).name) for line in lines)


def _read_module(path: Path) -> bytes:
    """The module's ELF bytes: busybox insmod cannot load a compressed module, so decompress it here."""
    data = path.read_bytes()
    if path.name.endswith(".ko"):
        return data
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        # The standard library has no zstd before 3.14; the zstd tool comes with Debian's zstd package.
        if shutil.which("zstd") is None:
            raise RuntimeError(f"{path} is zstd-compressed: install the zstd package")
        return subprocess.run(["zstd", "-dc", str(path)], check=True, stdout=subprocess.PIPE).stdout
    raise ValueError(f"unknown module compression: {path}")


def _check_static(binary: Path) -> None:
    """Fail early if ``binary`` is dynamically linked (as Debian's busybox package is): the guest has no libc."""
    with binary.open("rb") as f:
        header = f.read(64)
        if header[:5] != b"\x7fELF\x02":
            raise RuntimeError(f"{binary} is not a 64-bit ELF executable")
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    if any(struct.unpack_from("<I", table, i * phentsize)[0] == PT_INTERP for i in range(phnum)):
        raise RuntimeError(f"{binary} is dynamically linked: install busybox-static (scripts/install-guest-deps.sh)")


class _Cpio:
    """A cpio archive in the "newc" format the kernel unpacks an initramfs from: each entry is a 110-byte ASCII
    header, the NUL-terminated name and the data, both padded to 4 bytes. Owner root, mtime 0 (reproducible)."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 0

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, b"", nlink=2)

    def file(self, name: str, data: bytes, mode: int) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return self._out.getvalue()

    def _entry(self, name: str, mode: int, data: bytes, nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        # magic, then ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._out.write(b"070701" + b"".join(b"%08X" % value for value in fields))
        self._out.write(encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))
