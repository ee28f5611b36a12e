"""The hot path stays in C: `cython -a` shows no Python interaction (a white line) anywhere inside the engine's
nogil functions and inside the batch loops that run with the GIL released.

The nogil functions are found by name in the sources, whatever the line breaks of their signatures, and must be
exactly NOGIL_FUNCTIONS: a new one is added here, and so gets checked. COLD_PATHS are the few that take the GIL on
purpose, for something that happens only on bad input, never per request."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vring

SOURCE = Path(vring.__file__).parent  # the installed package ships the .pyx, .pxi and headers

NOGIL_FUNCTIONS = {
    # defs.pxi
    "need_event",
    # memory.pxi
    "table_head", "mem_find", "mem_ptr", "mem_contains",
    # split_ring.pxi
    "split_avail_flags", "split_avail_idx", "split_avail_entry", "split_used_event", "split_used_flags",
    "split_used_idx", "split_used_elem", "split_avail_event",
    # packed_ring.pxi
    "packed_is_avail", "packed_is_used", "packed_flags", "packed_advance", "packed_write_desc",
    "packed_publish_desc", "packed_event_flags", "packed_event_wants", "packed_set_event", "packed_arm_event",
    # descriptors.pxi
    "dev_fail", "dev_add_seg", "dev_translate", "dev_piece", "dev_fail_piece", "dev_open_indirect",
    # inflight.pxi
    "split_rec_header", "split_rec_entry", "packed_rec_header", "packed_rec_entry", "split_rec_fetched",
    "split_rec_used", "split_rec_published", "packed_rec_copy", "packed_rec_fetched", "packed_rec_used",
    "packed_rec_done",
    # driver_checks.pxi
    "drv_indirect_for", "drv_needed", "drv_reserve", "drv_check_buffer", "drv_check_free_list",
    # split_device.pxi
    "split_dev_bind", "split_dev_reset", "split_dev_check_invariants", "split_dev_walk", "split_dev_peek",
    "split_dev_commit", "split_dev_after_pop", "split_dev_put_used", "split_dev_publish", "split_dev_notify_needed",
    "split_dev_avail_pending", "split_dev_enable_notifications", "split_dev_disable_notifications",
    # packed_device.pxi
    "packed_dev_bind", "packed_dev_reset", "packed_dev_check_invariants", "packed_dev_peek", "packed_dev_lay_out_kept",
    "packed_dev_walk", "packed_dev_commit",
    "packed_dev_after_pop", "packed_dev_put_used", "packed_dev_notify_needed", "packed_dev_avail_pending",
    "packed_dev_enable_notifications", "packed_dev_disable_notifications",
    # split_driver.pxi
    "split_drv_bind", "split_drv_reset", "split_drv_check_invariants", "split_drv_add", "split_drv_kick_needed",
    "split_drv_free_chain", "split_drv_reap_one", "split_drv_after_reap", "split_drv_disable_interrupts",
    "split_drv_enable_interrupts",
    # packed_driver.pxi
    "packed_drv_bind", "packed_drv_reset", "packed_drv_check_invariants", "packed_drv_add", "packed_drv_kick_needed",
    "packed_drv_consume", "packed_drv_release", "packed_drv_skip_push", "packed_drv_reap_one", "packed_drv_after_reap",
    "packed_drv_disable_interrupts", "packed_drv_enable_interrupts",
    # dispatch.pxi
    "dev_bind", "dev_reset", "dev_check_invariants", "dev_peek", "dev_commit", "dev_after_pop", "dev_put_used",
    "dev_publish", "dev_notify_needed", "dev_avail_pending", "dev_enable_notifications", "dev_disable_notifications",
    "drv_bind", "drv_reset", "drv_check_invariants", "drv_add", "drv_kick_needed", "drv_reap_one", "drv_after_reap",
    "drv_disable_interrupts", "drv_enable_interrupts",
    # debug.pxi
    "dev_check_common_invariants", "dev_enter", "dev_exit", "drv_check_common_invariants", "drv_enter", "drv_exit",
    # device.pxi
    "dev_pop", "dev_check_push", "dev_push_all",
    # floor.pxi
    "now_ns",
    # blk_io.pxi
    "blk_iov_skip", "blk_exec", "blk_pool_thread",
    # blk_request.pxi
    "blk_range_ok", "blk_seg_host", "blk_copy_out", "blk_grow_iov", "blk_answer", "blk_parse", "blk_data_iov",
    "blk_bounce_copy", "blk_get_id", "blk_discard_or_zero", "blk_punch", "blk_zero_range", "blk_tell",
    # posix.pxi
    "peer_eventfd_take", "peer_eventfd_signal",
    # blk_worker.pxi
    "_serve_loop", "_look_briefly", "_adapt_polling", "_unreported_failure", "_arm_rings", "_disarm_ring", "_pop_ring", "_answer", "_tell", "_issue",
    "_submit_uring", "_reap_completions", "_complete_io", "_finish_answered", "_publish_rings",
    # blk_client.pxi
    "pattern_word", "pattern_fill", "pattern_check", "stream_add", "stream_reap", "stream_wait", "stream_loop",
}
# The blk executor's notice: a malformed request or a failed I/O handed to the device's log, with the GIL.
COLD_PATHS = {"_tell"}


def annotate(tmp_path: Path) -> dict[Path, tuple[list[str], dict[int, int]]]:
    """Run `cython -a` on the hub; for the hub and each included file: its lines and the score of each line."""
    for name in ("_cring.pyx", "_cring.pxd", "barrier.h"):
        shutil.copy(SOURCE / name, tmp_path / name)
    shutil.copytree(SOURCE / "_cring", tmp_path / "_cring")
    subprocess.run([sys.executable, "-m", "cython", "-3", "-a", "-I", str(tmp_path), str(tmp_path / "_cring.pyx"),
                    "-o", str(tmp_path / "_cring.c")], check=True, capture_output=True)
    out = {}
    for source in [tmp_path / "_cring.pyx", *sorted((tmp_path / "_cring").glob("*.pxi"))]:
        html = source.with_suffix(".html").read_text()
        scores = {int(line): int(score) for score, line in
                  re.findall(r'<pre class="cython line score-(\d+)"[^>]*>.*?<span class="">(\d+)</span>', html)}
        assert scores, f"no annotation found for {source.name}"
        out[source] = (source.read_text().split("\n"), scores)
    return out


def indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def block_after(lines: list[str], header_end: int, header_indent: int) -> range:
    """1-based numbers of the lines of the indented block after line ``header_end``."""
    end = header_end
    while end < len(lines) and (not lines[end].strip() or indent(lines[end]) > header_indent):
        end += 1
    return range(header_end + 1, end + 1)


def nogil_functions(lines: list[str]) -> dict[str, range]:
    """Name -> body lines of every `cdef ... nogil:` function, the signature possibly spread over several lines."""
    found = {}
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        if not re.match(r"\s*cdef\s.*\(", line):
            continue
        start, signature, depth = number, line, line.count("(") - line.count(")")
        while depth > 0:  # the parameters go on
            signature += " " + lines[number].strip()
            depth += lines[number].count("(") - lines[number].count(")")
            number += 1
        after_params = signature[signature.rindex(")"):]
        if re.search(r"\bnogil\b", after_params) and signature.rstrip().endswith(":"):
            name = re.search(r"(\w+)\s*\(", signature).group(1)
            found[name] = block_after(lines, number, indent(lines[start - 1]))
    return found


def gil_free_loops(lines: list[str]) -> list[range]:
    """Lines run with the GIL released: between gil_release_if and gil_restore, and inside `with nogil:`."""
    regions = []
    for number, line in enumerate(lines, 1):
        if "= gil_release_if(" in line:
            end = next(n for n in range(number, len(lines) + 1) if "gil_restore(_ts)" in lines[n - 1])
            regions.append(range(number + 1, end))
        elif line.strip() == "with nogil:":
            regions.append(block_after(lines, number, indent(line)))
    return regions


@pytest.mark.c_extension  # compiles the core's source with Cython
def test_hot_paths_are_white(tmp_path):
    functions: dict[str, range] = {}
    yellow = []
    loops = 0
    for source, (lines, scores) in annotate(tmp_path).items():
        found = nogil_functions(lines)
        assert not set(found) & set(functions), f"a nogil function defined twice: {set(found) & set(functions)}"
        functions.update(found)
        regions = [body for name, body in found.items() if name not in COLD_PATHS] + gil_free_loops(lines)
        loops += len(regions) - len(set(found) - COLD_PATHS)
        for region in regions:
            yellow += [(source.name, n, lines[n - 1].strip()) for n in region if scores.get(n, 0) > 0]
    assert set(functions) == NOGIL_FUNCTIONS
    assert not yellow, f"Python interaction in the hot path: {yellow}"
    # every batch loop that releases the GIL (7), the C floor's, the blk worker's loop and its pool's join, and
    # blk_stream's
    assert loops == 11
