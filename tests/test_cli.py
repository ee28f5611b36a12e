"""The `vring` command as a whole: --version, --help with examples on every command, -v/-q everywhere, one-line
usage errors, and Ctrl-C in `vring bench` (parent and forked child) printing what finished."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import time

import pytest

from vring.bench import default_plan
from vring.cli import COMMANDS, build_parser
from vring._version import __version__

from support.cli_run import assert_one_line, vring_cli, vring_popen


def test_version():
    done = vring_cli("--version")
    assert done.returncode == 0 and done.stdout.decode().strip() == f"vring {__version__}"


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_examples(command):
    done = vring_cli(*([command] if command else []), "--help")
    assert done.returncode == 0, done.stderr
    assert b"examples:\n  vring " in done.stdout


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_has_help(command):
    (name, parser), = [(n, p) for n, p in _subparsers(build_parser(command)) if n == command]
    parsers = [(name, parser)] + [(f"{name} {n}", p) for n, p in _subparsers(parser)]
    for where, p in parsers:
        for action in p._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"vring {where}: {action.dest} has no help"


@pytest.mark.parametrize("args", [("info", "-q"), ("info", "-v"), ("demo", "-vv"), ("demo", "--quiet")])
def test_verbosity_options_on_every_command(args):
    done = vring_cli(*args)
    assert done.returncode == 0, done.stderr


def test_verbosity_options_are_parsed_by_serve_bench_and_blk(tmp_path):
    for args in (("serve", "-q", "blk", "--socket", "s"), ("bench", "-v", "--seconds", "0"),
                 ("blk", "-q", "--socket", "s", "info", "--bogus")):
        done = vring_cli(*args)
        assert done.returncode == 2 and "-q" not in done.stderr and "-v" not in done.stderr, done.stderr


@pytest.mark.parametrize("args,fragment", [
    (("nosuch",), "invalid choice: 'nosuch'"),
    ((), "the following arguments are required: command"),
    (("bench", "--seconds", "-1"), "--seconds: -1 must be a number above 0"),
])
def test_usage_errors_are_one_line(args, fragment):
    assert_one_line(vring_cli(*args), 2, fragment, "--help")


def test_bench_checks_its_output_paths_first():
    done = vring_cli("bench", "--json", "/nonexistent/x.json", timeout=20)
    assert_one_line(done, 1, "cannot write /nonexistent/x.json: no directory /nonexistent")


def _interrupt_bench_when(marker: str) -> tuple[int, str, str]:
    """Run `vring bench --quick`, Ctrl-C it (the whole process group, as a terminal does) once its progress
    shows ``marker``; (exit code, stdout, stderr)."""
    proc = vring_popen("bench", "--quick", "--seconds", "0.002", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, start_new_session=True)
    assert proc.stderr is not None
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                time.sleep(0.1)  # into the case the line announces
                os.killpg(proc.pid, signal.SIGINT)
                break
        else:
            pytest.fail(f"no {marker!r} in the progress: {''.join(seen)}")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, "".join(seen) + err


def test_ctrl_c_in_the_engine_cases_prints_the_cases_that_finished():
    plan = default_plan(quick=True)
    code, out, err = _interrupt_bench_when(f"[3/{len(plan)}]")
    assert code == 130, err
    assert "Traceback" not in err
    found = re.search(rf"interrupted after (\d+) of {len(plan)} cases; no file written", err)
    assert found, err
    finished = int(found.group(1))
    assert 2 <= finished < len(plan)
    rows = [line.split("  ")[0] for line in out.splitlines() if any(line.startswith(p.name + " ") for p in plan)]
    assert rows == [p.name for p in plan[:finished]]


def test_ctrl_c_in_the_two_process_benchmark_stops_parent_and_child_quietly():
    code, out, err = _interrupt_bench_when("[two-process 2/4]")
    assert code == 130, err
    assert "Traceback" not in err
    assert "interrupted in the two-process benchmark" in err
    assert default_plan(quick=True)[-1].name in out
    assert re.search(r"^poll +no copy +[\d,]+ ", out, re.M), out  # the first two-process case had finished


def test_log_lines_as_json(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    sock = tmp_path / "s.sock"
    proc = vring_popen("serve", "blk", str(image), "--socket", str(sock), "-v", "--log-format", "json",
                       stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r["message"] == f"listening on {sock}" and r["level"] == "INFO" for r in records), err
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
