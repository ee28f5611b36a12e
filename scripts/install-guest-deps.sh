#!/usr/bin/env bash
# What the integration tests need from Debian: QEMU to boot a guest without KVM (tests/support/guest.py) and its
# storage daemon, a stock kernel with its virtio modules, a static busybox as the guest's whole userland, and
# DPDK's testpmd as a vhost-user-net back-end (tests/test_dpdk.py), and liburing's headers, which the C core's
# virtio-blk worker is built with for io_uring (setup.py builds without it, falling back to a thread pool).
# Installs only what is missing, so a second run does nothing; works as root or through sudo, with no stdin.
set -euo pipefail

packages=(qemu-system-x86 qemu-system-common qemu-utils linux-image-amd64 busybox-static
          dpdk-dev librte-net-vhost23 librte-mempool-ring23 liburing-dev)

INSTALL_WHO=install-guest-deps exec bash "$(dirname "$0")/install-debian-packages.sh" "${packages[@]}"
