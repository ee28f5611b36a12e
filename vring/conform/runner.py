"""Running the cases against a back-end and judging each one.

Every case gets a fresh connection for its attack. Around it, a check connection reads back the pattern the case
started with (the same connection then writes the next case's pattern), so that a back-end that corrupted the
disk, or stopped serving anyone, shows in the case that did it. The disk's first sectors are read at the start
and written back at the end.

Verdicts: ``rejected`` — the back-end refused cleanly (error eventfd, closed connection, a NACK or an error
status) and a new connection is still served; ``served`` — it served the case correctly; ``hung`` — the queue or
the connection stopped answering within the timeout, without a word (a queue that stops silently hangs its
guest); ``corrupted`` — wrong bytes came back, a device-readable buffer was written, or a request that cannot be
served was completed as OK; ``died`` — the back-end refuses new connections; ``skipped`` — the back-end does not
offer a feature the case needs (or the run stopped once it died).
"""

from __future__ import annotations

import random
import time
from typing import Callable

from .._features import Feature
from ..devices.blk import F_RO, S_OK, SECTOR, STATUS_NAMES
from .cases import PATTERN_SECTOR, PATTERN_SECTORS, Case, all_cases, select_cases
from .report import Verdict
from .session import Outcome, Session, Submitted
from .wire import Closed, NoReply, Refused

PATTERN_BYTES = PATTERN_SECTORS * SECTOR
Judgement = tuple[str, str]  # verdict, detail


class ConformError(Exception):
    """The back-end does not serve even a well-formed session: no case can be judged."""


def pattern_for(index: int) -> bytes:
    """The bytes case ``index`` finds on the disk: different for every case, so a stale answer shows."""
    return random.Random(f"vring-conform-{index}").randbytes(PATTERN_BYTES)


def _status_name(status: int | None) -> str:
    return "none" if status is None else STATUS_NAMES.get(status, f"{status:#x}")


# -- the same connection, after the attack ---------------------------------------------------------------------
def _read_back(s: Session, pattern: bytes, served: Judgement) -> Judgement:
    """A well-formed read of the pattern on the attacked connection: ``served`` if it comes back right."""
    try:
        data = s.read_sectors(PATTERN_SECTOR, PATTERN_SECTORS)
    except NoReply:
        if s.wire.closed():
            return "rejected", f"{served[1]}; then closed the connection"
        return "hung", f"{served[1]}; then a well-formed read got no answer"
    except (Closed, Refused) as exc:
        return "rejected", f"{served[1]}; then {exc}"
    except RuntimeError as exc:
        return "rejected", f"{served[1]}; then {exc}"
    if data != pattern:
        return "corrupted", f"{served[1]}; then a read returned wrong bytes"
    return served


# -- ring cases ------------------------------------------------------------------------------------------------
def _judge_ring(case: Case, s: Session, submitted: Submitted | None, outcome: Outcome, pattern: bytes) -> Judgement:
    if submitted is not None and (addr := s.changed(submitted)) is not None:
        return "corrupted", f"wrote the device-readable buffer at {addr:#x}"
    if outcome.kind == "error":
        return "rejected", "signalled the error eventfd"
    if outcome.kind == "closed":
        return "rejected", "closed the connection"
    if outcome.kind == "used":
        if submitted is None:
            return "corrupted", f"used id {outcome.ident}, a descriptor never made available"
        status = s.status(submitted)
        if outcome.ident != submitted.ident:
            return "corrupted", f"used id {outcome.ident}, not the id {submitted.ident} made available"
        if case.impossible and status == S_OK:
            return "corrupted", "completed with status OK a request that cannot be served"
        return _read_back(s, pattern, ("served", f"used with status {_status_name(status)}"))
    if submitted is None:  # silent, as it should be: the ring still works
        return _read_back(s, pattern, ("served", "ignored it"))
    answers = s.wire.answers()
    if s.wire.closed():
        return "rejected", "closed the connection (when asked something after the request went unanswered)"
    if answers:
        return "hung", f"the request never completed and no error was signalled in {s.timeout} s"
    return "hung", f"neither the ring nor the connection answered in {s.timeout} s"


def _ring_case(case: Case, s: Session, pattern: bytes) -> Judgement:
    s.setup()
    submitted = case.attack(s, pattern)
    # Nothing made available: give the back-end a moment to get it wrong, then check that the ring still works.
    outcome = s.wait(s.timeout / 4 if submitted is None else None)
    return _judge_ring(case, s, submitted, outcome, pattern)


# -- message cases ---------------------------------------------------------------------------------------------
def _message_case(case: Case, s: Session, pattern: bytes) -> Judgement:
    refusal = None
    try:
        case.attack(s, pattern)
    except Refused as exc:
        refusal = f"refused it ({exc})"
    except Closed:
        return "rejected", "closed the connection"
    except NoReply as exc:
        if s.wire.closed():
            return "rejected", "closed the connection"
        return "hung", str(exc)
    try:
        s.setup()
    except Closed:
        return "rejected", refusal or "closed the connection at the set-up after it"
    except Refused as exc:
        return "rejected", refusal or f"refused the set-up after it ({exc})"
    except NoReply as exc:
        return "hung", f"{refusal or 'took it'}; then {exc}"
    if refusal:
        return _read_back(s, pattern, ("rejected", refusal))
    return _read_back(s, pattern, ("served", "took it"))


def judge(case: Case, path: str, timeout: float, pattern: bytes) -> Judgement:
    """The verdict on ``case`` from its own connection (the check connection may overrule it)."""
    s = Session(path, timeout)
    try:
        try:
            s.connect(case.features)
        except (Closed, Refused, NoReply) as exc:
            return "died" if isinstance(exc, Closed) else "hung", f"a new connection failed: {exc}"
        missing = case.needs & ~s.features
        if missing:
            names = "|".join(f.name or "" for f in Feature if f & missing)
            return "skipped", f"the back-end does not offer {names}"
        try:
            if case.kind == "ring":
                return _ring_case(case, s, pattern)
            return _message_case(case, s, pattern)
        except (Closed, Refused, NoReply) as exc:  # the ring's set-up before a ring attack
            return ("hung" if isinstance(exc, NoReply) else "rejected"), f"set-up failed: {exc}"
    finally:
        s.close()


# -- the check connection --------------------------------------------------------------------------------------
def _check(path: str, timeout: float, expected: bytes | None, then_write: bytes | None) -> Judgement | None:
    """A new connection reads the pattern back (if ``expected``) and writes the next one: None if all is well,
    else the verdict it calls for."""
    s = Session(path, timeout)
    try:
        try:
            s.connect()
            s.setup()
        except Closed as exc:
            return "died", f"a new connection: {exc}"
        except (Refused, NoReply) as exc:
            return "hung", f"a new connection could not set up a ring: {exc}"
        try:
            if expected is not None and s.read_sectors(PATTERN_SECTOR, PATTERN_SECTORS) != expected:
                return "corrupted", "a new connection read wrong bytes back"
            if then_write is not None:
                s.write_sectors(PATTERN_SECTOR, then_write)
        except (Closed, Refused, NoReply, RuntimeError) as exc:
            return "hung", f"a new connection was not served: {exc}"
        return None
    finally:
        s.close()


def _worse(judgement: Judgement, check: Judgement | None) -> Judgement:
    order = ["skipped", "served", "rejected", "hung", "corrupted", "died"]
    if check is None or order.index(check[0]) <= order.index(judgement[0]):
        return judgement
    return check[0], f"{judgement[1]}; {check[1]}"


def run(socket_path: str, *, timeout: float = 2.0, case: str | None = None, cases: list[Case] | None = None,
        on_verdict: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """Every case (or those ``case`` matches, or ``cases``) against the vhost-user-blk back-end on
    ``socket_path``; ``on_verdict`` hears each verdict as it is reached. Raises ConformError when a well-formed
    session fails before the first case. Overwrites the first 4 KiB of the disk and restores them at the end."""
    chosen = select_cases(all_cases() if cases is None else cases, case)
    baseline = Session(socket_path, timeout)
    try:
        baseline.connect()
        baseline.setup()
        original = baseline.read_sectors(PATTERN_SECTOR, PATTERN_SECTORS)
        writable = not baseline.features & F_RO
        if writable:
            baseline.write_sectors(PATTERN_SECTOR, pattern_for(0))
    except (Closed, Refused, NoReply, RuntimeError) as exc:
        raise ConformError(f"a well-formed session failed: {exc}") from None
    finally:
        baseline.close()
    verdicts: list[Verdict] = []
    alive = True
    for index, this in enumerate(chosen):
        if not alive:
            verdicts.append(Verdict(this.name, "skipped", "not run: the back-end died"))
        else:
            pattern = pattern_for(index) if writable else original
            started = time.monotonic()
            judgement = judge(this, socket_path, timeout, pattern)
            last = index == len(chosen) - 1
            following = (original if last else pattern_for(index + 1)) if writable else None
            if judgement[0] != "died":
                judgement = _worse(judgement, _check(socket_path, timeout, pattern, following))
            alive = judgement[0] != "died"
            verdicts.append(Verdict(this.name, judgement[0], judgement[1],  # type: ignore[arg-type]
                                    round(time.monotonic() - started, 3)))
        if on_verdict is not None:
            on_verdict(verdicts[-1])
    return verdicts
