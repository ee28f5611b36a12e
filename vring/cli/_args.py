"""What every subcommand shares: argument types that refuse bad values at parse time (exit 2), the error a
command raises to end with one line, the check that an output path can be written, and -v/-q."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable


class CommandError(Exception):
    """Ends a command with ``message`` on one line of stderr and exit ``code`` (1: runtime, 2: usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (no upper bound if None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bounds}")
        return value

    parse.__name__ = "integer"
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0")
    return value


def check_output_path(path: str) -> None:
    """CommandError unless a file can be created or replaced at ``path`` ('-' is stdout): checked before any
    long work, so that a typo does not cost a whole run."""
    if path == "-":
        return
    if os.path.isdir(path):
        raise CommandError(f"{path} is a directory")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise CommandError(f"cannot write {path}: no directory {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CommandError(f"cannot write {path}: permission denied")


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log lines on stderr (-v: what happens, -vv: every message)")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only: no progress, no log lines")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines as text (default) or as one JSON object each, for a log collector")


class JsonFormatter(logging.Formatter):
    """One JSON object per log record: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(args: argparse.Namespace) -> None:
    """Log to stderr at the level -v/-q ask for (warnings by default), as text or JSON lines."""
    level = (logging.ERROR if args.quiet else logging.DEBUG if args.verbose > 1 else
             logging.INFO if args.verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else
                         logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
