#!/usr/bin/env bash
# What the integration tests need from Debian: QEMU to boot a guest without KVM (tests/support/guest.py) and its
# storage daemon, a stock kernel with its virtio modules, a static busybox as the guest's whole userland, and
# DPDK's testpmd as a vhost-user-net back-end (tests/test_dpdk.py).
# Installs only what is missing, so a second run does nothing; works as root or through sudo, with no stdin.
set -euo pipefail

packages=(qemu-system-x86 qemu-system-common qemu-utils linux-image-amd64 busybox-static
          dpdk-dev librte-net-vhost23 librte-mempool-ring23)

missing=()
for pkg in "${packages[@]}"; do
    # dpkg -s also succeeds for a package removed but not purged: require it to be installed.
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
    echo "install-guest-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
fi

echo "install-guest-deps: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
