#!/usr/bin/env bash
# The pytest-benchmark suite in bench/, against the installed package (run scripts/setup.sh first).
# Arguments go to pytest: e.g. --benchmark-autosave, then later --benchmark-compare to see the change.
set -euo pipefail
cd "$(dirname "$0")/../bench"
exec ../.venv/bin/python -m pytest -p no:cacheprovider "$@"
