"""`vring conform` against real back-ends: vring's own (`vring serve blk`), where every case must end rejected
or served, and qemu-storage-daemon, whose verdicts are printed for the record, not gated."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import pytest

from vring.conform import Verdict, all_cases, run, select_cases, table
from vring.devices.blk import S_OK, T_OUT, BlkDevice
from vring.devices.image import Image
from vring.vhost_user import VhostUserBackend

from support.backends import qsd_blk, vring_blk
from support.cli_run import assert_one_line, vring_cli

IMAGE_BYTES = 4 << 20
CASE_NAMES = [case.name for case in all_cases()]


def _image(folder: Path) -> Path:
    path = folder / "disk.img"
    path.write_bytes(os.urandom(IMAGE_BYTES))
    return path


@pytest.fixture(scope="module")
def vring_run(tmp_path_factory):
    """One `vring conform --json` run against `vring serve blk`: (exit status, verdicts by case, image,
    original image bytes)."""
    folder = tmp_path_factory.mktemp("conform-vring")
    image = _image(folder)
    original = image.read_bytes()
    report = folder / "verdicts.json"
    with vring_blk(image, folder / "blk.sock"):
        done = vring_cli("conform", "--socket", str(folder / "blk.sock"), "--json", str(report), "-q",
                         timeout=120)
    verdicts = {c["case"]: c for c in json.loads(report.read_text())["cases"]}
    return done, verdicts, image.read_bytes(), original


def test_vring_passes_with_exit_0_and_a_table(vring_run):
    done, verdicts, _, _ = vring_run
    assert done.returncode == 0, (done.stdout, done.stderr)
    text = done.stdout.decode()
    assert all(name in text for name in CASE_NAMES)
    assert set(verdicts) == set(CASE_NAMES)


def test_vring_image_is_restored(vring_run):
    *_, after, before = vring_run
    assert after == before


@pytest.mark.parametrize("name", CASE_NAMES)
def test_vring_case(vring_run, name):
    verdict = vring_run[1][name]
    assert verdict["verdict"] in ("rejected", "served"), verdict


def test_qsd_verdicts_reported(tmp_path, capsys):
    """qemu-storage-daemon, restarted whenever a case kills it; its verdicts go to the test log. Only the tool is
    checked here: every case gets one verdict of the known kinds."""
    image = _image(tmp_path)
    cases = all_cases()
    verdicts: list[Verdict] = []
    while len(verdicts) < len(cases):
        sock = tmp_path / f"qsd{len(verdicts)}.sock"
        with qsd_blk(image, sock):
            batch = run(str(sock), timeout=1.0, cases=cases[len(verdicts):])
        died = next((i for i, v in enumerate(batch) if v.verdict == "died"), None)
        verdicts += batch if died is None else batch[:died + 1]
    with capsys.disabled():
        print("\nqemu-storage-daemon:\n" + table(verdicts))
    assert [v.case for v in verdicts] == [case.name for case in cases]
    assert all(v.verdict in ("rejected", "served", "hung", "corrupted", "died", "skipped") for v in verdicts)


def test_case_selection():
    cases = all_cases()
    assert [c.name for c in select_cases(cases, "ring.indirect-len")] == [
        "ring.indirect-len-zero", "ring.indirect-len-odd", "ring.indirect-len-huge"]
    assert {c.kind for c in select_cases(cases, "msg.*")} == {"message"}
    assert len(set(CASE_NAMES)) == len(CASE_NAMES)


def test_cli_refuses_an_unknown_case_and_a_missing_backend(tmp_path):
    assert_one_line(vring_cli("conform", "--socket", str(tmp_path / "none.sock"), "--case", "no-such-case"), 2,
                    "no case matches")
    assert_one_line(vring_cli("conform", "--socket", str(tmp_path / "none.sock"), "--timeout", "0.3"), 1,
                    "a well-formed session failed")


def test_cli_lists_the_cases():
    done = vring_cli("conform", "--socket", "unused", "--list")
    assert done.returncode == 0
    names = [line.split()[0] for line in done.stdout.decode().splitlines()]
    assert names == CASE_NAMES


# -- the verdicts themselves, on back-ends faulty on purpose ----------------------------------------------------
class DroppingWrites(BlkDevice):
    """Answers OK to every write and writes nothing."""

    def _serve(self, request):
        if request.request_type == T_OUT:
            return S_OK, 0
        return super()._serve(request)


class StallingOnSplitHeaders(BlkDevice):
    """Blocks its connection on a request whose header comes in two descriptors, until ``release`` is set."""

    release = threading.Event()

    def handle(self, queue, chain):
        if len(chain.segments) == 4:  # header, header, data, status: only ring.header-split
            self.release.wait(30)
        return super().handle(queue, chain)


@contextlib.contextmanager
def in_process(device_class, tmp_path: Path):
    image = Image(str(_image(tmp_path)))  # opened once and shared by every connection's device, as `vring serve`
    backend = VhostUserBackend(lambda: device_class(image), str(tmp_path / "faulty.sock"))
    backend.listen()
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    try:
        yield backend.path
    finally:
        backend.stop()
        thread.join(10)
        image.close()


def test_a_back_end_that_drops_writes_is_corrupted(tmp_path):
    with in_process(DroppingWrites, tmp_path) as path:
        (verdict,) = run(path, case="ring.header-split", timeout=1.0)
    assert verdict.verdict == "corrupted" and "wrong bytes" in verdict.detail, verdict


def test_a_back_end_that_stalls_is_hung_and_fails_the_run(tmp_path):
    StallingOnSplitHeaders.release.clear()
    try:
        with in_process(StallingOnSplitHeaders, tmp_path) as path:
            verdicts = run(path, case="ring.header-*", timeout=0.5)
    finally:
        StallingOnSplitHeaders.release.set()
    assert [(v.case, v.verdict) for v in verdicts] == [("ring.header-short", "served"), ("ring.header-split", "hung")]
    assert verdicts[1].failed and not verdicts[0].failed
