#!/usr/bin/env bash
# The test command: set up (scripts/setup.sh and, for the tests against QEMU, scripts/install-guest-deps.sh),
# then run the whole suite against the installed package. Extra arguments go to pytest (e.g. -k blk, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! bash scripts/install-guest-deps.sh; then
    # In CI a missing QEMU is a failure; on a laptop without root the QEMU tests skip themselves.
    if [ -n "${CI:-}" ]; then exit 1; fi
    echo "test.sh: QEMU and the guest kernel could not be installed; the tests that need them will skip" >&2
fi
bash scripts/setup.sh
# Run from the tests' own directory so that `import vring` finds the installed package, not the source tree.
cd tests
exec ../.venv/bin/python -m pytest -p no:cacheprovider "$@"
