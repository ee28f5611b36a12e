#!/usr/bin/env bash
# Everything vring needs on a fresh machine: a virtual environment in .venv with vring built from this checkout
# (compiling the Cython core) and the test tools. Run again, it rebuilds only if the sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Every source file of the package, whatever its folder: a change to any of them rebuilds.
stamp=$( (cat pyproject.toml setup.py; find vring -type f \( -name '*.py' -o -name '*.pyx' -o -name '*.pxi' \
          -o -name '*.pxd' -o -name '*.pyi' -o -name '*.h' \) -not -path '*/__pycache__/*' | LC_ALL=C sort \
          | xargs cat) | sha256sum)
if [ "$(cat .venv/.vring-stamp 2>/dev/null)" != "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # Build the wheel once and install it: the tests run against the installed package, as a user gets it.
    rm -rf .venv/wheels
    .venv/bin/python -m pip wheel --quiet --no-deps --wheel-dir .venv/wheels .
    wheel=$(ls .venv/wheels/vring-*.whl)
    .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$wheel"
    .venv/bin/python -m pip install --quiet "$wheel[test]"
    # The same core built in place too, so that `python -m vring` also works from inside the checkout (where the
    # source tree comes first on sys.path); the tests run from tests/ and import the installed package.
    .venv/bin/python setup.py --quiet build_ext --inplace >/dev/null
    echo "$stamp" > .venv/.vring-stamp
fi
.venv/bin/vring info
