"""``VRING_DEBUG=1`` builds a real debug core: its assertions catch a broken queue invariant and a second caller
inside one queue, and abort naming what broke. The normal build has none of it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.source import SOURCE_DIR, source_file

# The debug core is built from the source tree, setup.py and all (the installed package has no setup.py).
SOURCE = SOURCE_DIR

# Two queue pairs (split and packed) on one guest memory, for the scripts below.
PRELUDE = textwrap.dedent("""
    import numpy as np
    import vring
    from vring import _cring
    from vring import Feature, PackedLayout, SplitLayout

    mem = _cring.GuestMemory()
    mem.add_region(0x100000, bytearray(1 << 20))
    features = Feature.VERSION_1 | Feature.EVENT_IDX | Feature.INDIRECT_DESC
    split = SplitLayout.contiguous(16, 0x100000)
    drv = _cring.DriverQueue(mem, split, features, indirect_area=0x140000)
    dev = _cring.DeviceQueue(mem, split, features)
    packed = PackedLayout.contiguous(16, 0x110000)
    pdrv = _cring.PackedDriverQueue(mem, packed, features | Feature.RING_PACKED, indirect_area=0x150000)
    pdev = _cring.PackedDeviceQueue(mem, packed, features | Feature.RING_PACKED)
""")


@pytest.fixture(scope="module")
def debug_core(tmp_path_factory) -> Path:
    """A debug build of the core, made from the source tree in a temporary directory."""
    source_file("setup.py")
    root = tmp_path_factory.mktemp("debug-core")
    shutil.copytree(SOURCE / "vring", root / "vring",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "_cring.c", "*.html", "__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(SOURCE / name, root / name)
    env = dict(os.environ, VRING_DEBUG="1")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=root, env=env,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return root


def run(root: Path, script: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("VRING_PUREPYTHON", None)
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(script)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_debug_core_runs_a_correct_workload(debug_core):
    result = run(debug_core, """
        assert _cring.__file__.startswith(%r), _cring.__file__
        assert "-O0" in _cring.BUILD_CFLAGS and hasattr(_cring, "_debug_corrupt")
        for d, v in ((drv, dev), (pdrv, pdev)):
            for round in range(40):  # several laps of the ring, direct and indirect chains
                d.add([(0x180000, 64)], [(0x181000, 512)] * (1 + round %% 3))
                d.kick_needed()
                chain = v.pop()
                v.push(chain.head, 100)
                v.notify_needed()
                assert d.pop_used() == [(chain.head, 100)]
            batch = _cring.Batch(8, 32)
            batch.set_chains([(0x180000, 64, False), (0x181000, 256, True)], 8)
            assert d.add_batch(batch, 8) == 8
            d.kick_needed()
            assert v.pop_batch(batch) == 8
            v.push_batch(batch)
            assert d.reap_batch(batch) == 8
            _cring.run_cycles(d, v, batch, 200, 4)
            v.disable_notifications(); v.enable_notifications(); d.disable_interrupts(); d.enable_interrupts()
            v.restore(v.state); d.reset(); v.reset()
        print("ok")
    """ % str(debug_core))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("queue, what, invariant", [
    ("drv", "num_free", "num_free <= size"),
    ("pdrv", "num_free", "num_free <= size"),
    ("drv", "free_head", "free-list links in range"),
    ("pdrv", "free_head", "free-list links in range"),
    ("dev", "inflight", "a head is in flight (1) or not (0)"),
    ("pdev", "inflight", "a head is in flight (1) or not (0)"),
    ("dev", "avail_shadow", "avail_shadow - last_avail <= size"),
])
def test_a_broken_invariant_aborts_naming_it(debug_core, queue, what, invariant):
    result = run(debug_core, f"""
        _cring._debug_corrupt({queue}, {what!r})
        {queue}.reset()
        print("not caught")
    """)
    assert result.returncode == -signal.SIGABRT, (result.returncode, result.stdout, result.stderr)
    assert f"invariant broken: {invariant}" in result.stderr
    assert "not caught" not in result.stdout


@pytest.mark.parametrize("queue, kind", [("dev", "device queue"), ("pdrv", "driver queue")])
def test_a_second_caller_inside_a_queue_aborts(debug_core, queue, kind):
    # The first call is still inside the queue (converting its arguments) when the second one enters.
    call = "push_many(Reenter(), [])" if queue == "dev" else "add_many(Reenter(), [], [], 1)"
    result = run(debug_core, f"""
        class Reenter:
            def __array__(self, dtype=None, copy=None):
                {queue}.{"notify_needed" if queue == "dev" else "kick_needed"}()
                return np.zeros(0, dtype)
        {queue}.{call}
        print("not caught")
    """)
    assert result.returncode == -signal.SIGABRT, (result.returncode, result.stdout, result.stderr)
    assert f"invariant broken: one caller per queue (a second call entered a {kind}" in result.stderr


def test_the_normal_build_has_no_debug_hook():
    from vring import _cring

    assert "-O0" not in _cring.BUILD_CFLAGS
    assert not hasattr(_cring, "_debug_corrupt")
