#!/usr/bin/env bash
# The test command: set up (scripts/setup.sh), then run the whole suite against the installed package.
# Extra arguments go to pytest (e.g. -k differential, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Run from the tests' own directory so that `import vring` finds the installed package, not the source tree.
cd tests
exec ../.venv/bin/python -m pytest -p no:cacheprovider "$@"
