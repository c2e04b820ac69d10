#!/usr/bin/env bash
# Set up .venv and train JEM on the embedded digits data (no download, a few minutes on 2 CPU cores).
# Usage: bash scripts/quickstart.sh [key=value overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/jemkit run recipes/jem_digits.yaml "$@"
