#!/usr/bin/env bash
# What the fuzzing runner (fuzz/run.sh) needs from Debian: clang, to build the instrumented core
# (VRING_FUZZ=1), and compiler-rt's libFuzzer, whose no-main runtime the harnesses preload.
# Installs only what is missing, so a second run does nothing; works as root or through sudo, with no stdin.
set -euo pipefail

packages=(clang libclang-rt-14-dev)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null; then
    as_root=(sudo -n)  # -n: fail rather than prompt, since there may be no terminal
else
    echo "install-fuzz-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
fi

echo "install-fuzz-deps: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
