"""README's "Connect it to QEMU" block is what the guest tests run: each option it shows is an option of the
test guest's QEMU command (tests/support/guest.py) or of the device and chardev the tests add, and its `vring serve`
line is the one tests/support/backends.py starts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from support import guest
from support.backends import serve_args
from support.source import source_file



def block() -> list[list[str]]:
    text = source_file("README.md").read_text()
    match = re.search(r"<!-- qemu-commands -->\n```sh\n(.*?)```\n<!-- /qemu-commands -->", text, re.S)
    assert match, "README has no qemu-commands block"
    return [shlex.split(line) for line in match.group(1).replace("\\\n", " ").splitlines() if line.strip()]


def pairs(argv: list[str]) -> set[tuple[str, str]]:
    """(option, value) of a QEMU command line; a flag without a value is paired with ''."""
    out, i = set(), 1
    while i < len(argv):
        if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out.add((argv[i], argv[i + 1]))
            i += 2
        else:
            out.add((argv[i], ""))
            i += 1
    return out


def test_readme_qemu_command_is_the_test_guests():
    serve, qemu = block()
    sock = "/tmp/blk.sock"
    assert serve == ["vring", *serve_args(Path("disk.img"), Path(sock), queues=2)]
    # What test_guest_vring.py passes for its 2-queue case, on the command run_guest builds.
    tested = guest.qemu_command(Path("vmlinuz"), Path("initrd.gz"), [
        "-chardev", f"socket,id=c0,path={sock}", "-device", "vhost-user-blk-pci,chardev=c0,num-queues=2",
    ], smp=2)
    assert Path(qemu[0]).name == Path(tested[0]).name
    shown, run = pairs(qemu), pairs(tested)
    shown.discard(("-append", "console=ttyS0"))  # the tests append more (quiet panic=-1) to the same console
    assert any(opt == "-append" and value.startswith("console=ttyS0") for opt, value in run)
    assert shown <= run, f"README shows what the tests do not run: {sorted(shown - run)}"
