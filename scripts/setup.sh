#!/usr/bin/env bash
# Everything vring needs on a fresh machine: a virtual environment in .venv with vring built from this checkout
# (compiling the Cython core) and the test tools. Safe to run again: it rebuilds vring from the current sources.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Non-editable on purpose: the tests run against the installed wheel, as a user gets it.
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps .
.venv/bin/python -m pip install --quiet '.[test]'
.venv/bin/vring info
