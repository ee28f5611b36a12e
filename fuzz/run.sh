#!/usr/bin/env bash
# Coverage-guided fuzzing of vring with atheris (fuzz/README.md): builds what it needs, then runs each harness
# for FUZZ_SECONDS (default 60) and prints its executions and coverage; any crash fails the run.
#
#   bash fuzz/run.sh                                  # every harness for a minute (what CI runs)
#   FUZZ_SECONDS=3600 bash fuzz/run.sh device_split   # a longer local run of one harness (or several)
#
# Set-up, each step skipped when already done: clang and libFuzzer from Debian (scripts/install-fuzz-deps.sh),
# a virtual environment in fuzz/.venv with atheris, libFuzzer's no-main runtime as a shared library in
# fuzz/runtime/ (preloaded into the harnesses so that atheris sees the C core's coverage), and vring built from a
# copy of this checkout with VRING_FUZZ=1 (clang, -fsanitize=fuzzer-no-link) into that environment.
# Each harness grows its corpus in fuzz/work/corpus/<name> from the seeds in fuzz/corpus/<name>; crashing
# inputs go to fuzz/crashes/<name>-crash-*; the full log of a run is fuzz/work/<name>.log.
# FUZZ_TWINS=c|py|both picks the twin of the single-twin harnesses (default c, the Cython core). FUZZ_JOBS harnesses
# run at once (default: the number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-60}
export VRING_FUZZ_TWINS=${FUZZ_TWINS:-c}  # what fuzz/harness.py reads
HARNESSES=("$@")
if [ ${#HARNESSES[@]} -eq 0 ]; then
    HARNESSES=(device_split device_packed driver twins blk_request blk_worker vhost_user inflight)
fi
PYTHON=${PYTHON:-python3}
VENV=fuzz/.venv

bash scripts/install-fuzz-deps.sh
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

# libFuzzer without its main(), as one shared object: preloaded, it gives the instrumented core its callbacks.
runtime=fuzz/runtime/libfuzzer_no_main.so
if [ ! -f "$runtime" ]; then
    mkdir -p fuzz/runtime
    archive=$(clang -print-file-name=libclang_rt.fuzzer_no_main-x86_64.a)
    clang -shared -o "$runtime" -Wl,--whole-archive "$archive" -Wl,--no-whole-archive -lstdc++ -lpthread -lm
fi

# vring from a copy of the tracked files, so that the instrumented objects never mix with a normal build's.
stamp=$(git ls-files -- vring setup.py pyproject.toml | xargs cat | sha256sum)
if [ "$(cat "$VENV/.vring-fuzz-stamp" 2>/dev/null)" != "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet numpy cython "setuptools>=77" wheel
    rm -rf fuzz/work/src
    mkdir -p fuzz/work/src
    git ls-files -- vring setup.py pyproject.toml README.md LICENSE MANIFEST.in | tar -cf - -T - | tar -xf - -C fuzz/work/src
    VRING_FUZZ=1 "$VENV/bin/python" -m pip install --quiet --no-build-isolation --force-reinstall \
        "./fuzz/work/src[fuzz]"
    echo "$stamp" > "$VENV/.vring-fuzz-stamp"
fi

mkdir -p fuzz/crashes fuzz/work/corpus

run_harness() {  # run one harness for SECONDS_EACH; its exit status goes to fuzz/work/<name>.status
    local name=$1 status=0
    mkdir -p "fuzz/work/corpus/$name"
    # -timeout: one input running longer than that is a hang (a crash); the harness bounds each call far lower.
    LD_PRELOAD="$PWD/$runtime" "$VENV/bin/python" "fuzz/fuzz_$name.py" -max_total_time="$SECONDS_EACH" \
        -timeout=60 -print_final_stats=1 -artifact_prefix="fuzz/crashes/$name-" "fuzz/work/corpus/$name" \
        "fuzz/corpus/$name" >"fuzz/work/$name.log" 2>&1 || status=$?
    echo "$status" >"fuzz/work/$name.status"
}

report() {  # one line of what a finished harness did; the failure's lines from its log if it failed
    local name=$1 log=fuzz/work/$1.log status done_line execs cov
    status=$(cat "fuzz/work/$name.status" 2>/dev/null || echo "unknown: the harness's runner died")
    done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\) corp: \([^ ]*\) .*/cov \1, features \2, corpus \3/p' \
        <<<"$done_line")
    if [ "$status" != 0 ]; then
        echo "fuzz $name: FAILED (exit $status) after ${execs:-?} executions; ${cov:-no coverage line}"
        grep -E -A12 '=== Uncaught Python exception|ERROR: libFuzzer|Test unit written' "$log" | head -40 || true
        failed+=("$name")
    else
        echo "fuzz $name: ${execs:-?} executions in ${SECONDS_EACH} s; ${cov:-no coverage line}"
    fi
}

# FUZZ_JOBS harnesses at a time (default: one per core), each a single process on its own core.
jobs=${FUZZ_JOBS:-$(nproc)}
failed=()
for ((i = 0; i < ${#HARNESSES[@]}; i += jobs)); do
    batch=("${HARNESSES[@]:i:jobs}")
    echo "--- fuzz ${batch[*]}: ${SECONDS_EACH} s each, at once"
    for name in "${batch[@]}"; do
        rm -f "fuzz/work/$name.status"
        run_harness "$name" &
    done
    wait
    for name in "${batch[@]}"; do
        report "$name"
    done
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: ${#failed[@]} harness(es) failed: ${failed[*]} (inputs in fuzz/crashes/)"
    exit 1
fi
echo "fuzz: ${#HARNESSES[@]} harnesses ran clean"
