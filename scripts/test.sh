#!/usr/bin/env bash
# Set up .venv if needed and run the default test suite (CPU, under 15 minutes on 2 cores).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
