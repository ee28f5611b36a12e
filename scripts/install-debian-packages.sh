#!/usr/bin/env bash
# Install the Debian packages named as arguments, only those missing, so a second run does nothing; as root or
# through sudo, with no stdin. The other install-*-deps.sh scripts say which packages and why.
set -euo pipefail
who=${INSTALL_WHO:-$(basename "$0" .sh)}

missing=()
for pkg in "$@"; do
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
    echo "$who: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
fi

echo "$who: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
