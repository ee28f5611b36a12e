#!/usr/bin/env bash
# What the fuzzing runner (fuzz/run.sh) needs from Debian: clang, to build the instrumented core
# (VRING_FUZZ=1), and compiler-rt's libFuzzer, whose no-main runtime the harnesses preload.
# Installs only what is missing, so a second run does nothing; works as root or through sudo, with no stdin.
set -euo pipefail

packages=(clang libclang-rt-14-dev)

INSTALL_WHO=install-fuzz-deps exec bash "$(dirname "$0")/install-debian-packages.sh" "${packages[@]}"
