#!/usr/bin/env bash
# Everything vring needs on a fresh machine: a virtual environment in .venv with vring built from this checkout
# (compiling the Cython core) and the test tools. Run again, it rebuilds only if the sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=$(cat pyproject.toml setup.py vring/*.py vring/*.pyx vring/*.pxd vring/*.h vring/_pyring/*.py | sha256sum)
if [ "$(cat .venv/.vring-stamp 2>/dev/null)" != "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # Build the wheel once and install it: the tests run against the installed package, as a user gets it.
    rm -rf .venv/wheels
    .venv/bin/python -m pip wheel --quiet --no-deps --wheel-dir .venv/wheels .
    wheel=$(ls .venv/wheels/vring-*.whl)
    .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$wheel"
    .venv/bin/python -m pip install --quiet "$wheel[test]"
    echo "$stamp" > .venv/.vring-stamp
fi
.venv/bin/vring info
