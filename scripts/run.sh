#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then show the engine at work.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cd /tmp
exec "$OLDPWD/.venv/bin/python" -m vring demo
