#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then benchmark the engine (`vring bench`; arguments pass on, e.g.
# --quick, --json PATH, --plot PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vring bench "$@"
