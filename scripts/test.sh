#!/usr/bin/env bash
# Set up .venv if needed and run the default test suite (CPU, under 15 minutes on 2 cores).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long runs.
set -euo pipefail
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# can slow a step by 40x. Results are unchanged.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
