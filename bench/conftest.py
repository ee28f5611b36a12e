"""The benchmarks reuse the test suite's helpers (the guest harness, the back-end launchers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.guest_fixtures import kernel  # noqa: E402,F401  (the guest kernel fixture)
