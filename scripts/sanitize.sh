#!/usr/bin/env bash
# The engine tests and the fuzz corpora, both twins, against a core built under AddressSanitizer and
# UndefinedBehaviorSanitizer (setup.py's VRING_SANITIZE=1). The core is built in place in a temporary copy of the
# source, so the checkout and .venv keep their normal build; the tests run on .venv's Python with that copy first
# on the path. Any sanitizer report fails the run, from the test process or from a process it starts that writes
# to the same standard error (as the two-process test's peer does). Extra arguments go to pytest.
# The interpreter itself is not instrumented: what is checked is the core's code, and (PYTHONMALLOC=malloc) the
# bounds of the heap blocks it reaches, such as a bytearray's buffer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # .venv: Cython, numpy and setuptools to build with, pytest and hypothesis to test with
python=$PWD/.venv/bin/python

# The ASan runtime must be loaded before anything else: the interpreter is not linked with it, the core is.
asan_runtime=$(gcc -print-file-name=libasan.so)
if [ ! -e "$asan_runtime" ]; then
    echo "sanitize.sh: gcc has no libasan.so (Debian: libgcc-12-dev, which gcc brings)" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -c --exclude='*.so' --exclude=__pycache__ --exclude=_cring.c --exclude='*.html' --exclude=fuzz/.venv \
    --exclude=fuzz/runtime --exclude=fuzz/crashes --exclude=fuzz/work/src setup.py pyproject.toml README.md vring tests fuzz \
    | tar -x -C "$work"
(cd "$work" && VRING_SANITIZE=1 "$python" setup.py --quiet build_ext --inplace)

export LD_PRELOAD=$asan_runtime PYTHONPATH=$work
export PYTHONMALLOC=malloc  # every Python allocation through ASan's malloc, so it is checked too
export PYTHONUNBUFFERED=1  # the log goes up to the report, so it shows which test was running
# No leak detection: CPython does not free everything at exit, and those leaks are not the core's.
# abort_on_error: a report ends in SIGABRT, on which Python's faulthandler prints the Python stack too.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:abort_on_error=1
unset VRING_PUREPYTHON

cd "$work/tests"
"$python" - "$work" <<'EOF'
import sys
from vring import _cring
assert _cring.__file__.startswith(sys.argv[1]), f"not the sanitized core: {_cring.__file__}"
assert "-fsanitize=address,undefined" in _cring.BUILD_CFLAGS, _cring.BUILD_CFLAGS
print("sanitize.sh: the core is", _cring.__file__, "built with", _cring.BUILD_CFLAGS)
EOF
# The sanitizers write to file descriptor 2, as do the peer processes a test starts: --capture=sys leaves it to
# the log, where a report is found even if it came from a process whose exit status no test looks at.
set +e
"$python" -m pytest -p no:cacheprovider --capture=sys test_engine.py test_packed.py test_validation.py \
    test_batch.py test_memory.py test_differential.py test_two_process.py "$@" 2>&1 | tee "$work/log"
status=${PIPESTATUS[0]}
# The fuzz corpora too: the seeds in the repository and what fuzz/run.sh grew (if it ran), on both twins.
for harness in "$work"/fuzz/fuzz_*.py; do
    name=$(basename "$harness" .py); name=${name#fuzz_}
    corpora=("$work/fuzz/corpus/$name")
    [ -d "$work/fuzz/work/corpus/$name" ] && corpora+=("$work/fuzz/work/corpus/$name")
    (cd "$work/fuzz" && VRING_FUZZ_REPLAY=1 VRING_FUZZ_TWINS=both "$python" "$harness" "${corpora[@]}") 2>&1 \
        | tee -a "$work/log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
set -e
if grep -q -E '==[0-9]+==ERROR: AddressSanitizer|: runtime error: ' "$work/log"; then
    echo "sanitize.sh: a sanitizer report (above) fails the run" >&2
    exit 1
fi
exit "$status"
