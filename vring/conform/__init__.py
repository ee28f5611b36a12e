"""``vring conform``: a hostile vhost-user front-end that attacks any vhost-user-blk back-end, no VM needed.

For each case it connects afresh, negotiates, shares memory and sets up a queue, then writes malformed rings
straight into the shared memory and kicks, or sends malformed messages; each case ends in a ``Verdict``
(``runner`` says what each verdict means). ``run(socket_path)`` runs them all.
"""

from .cases import Case, all_cases, select_cases
from .report import FAILURES, Verdict, table, to_json
from .runner import ConformError, run

__all__ = ["Case", "ConformError", "FAILURES", "Verdict", "all_cases", "run", "select_cases", "table", "to_json"]
