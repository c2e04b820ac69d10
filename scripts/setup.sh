#!/usr/bin/env bash
# Create .venv (if missing) and install jemkit with its test and tensorboard extras and the example plugin.
# Idempotent: a second call only re-checks the install. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.jemkit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ examples/jemkit-clipped-sgld/pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
    # torch 2.14.1 / torchvision 0.29.1 are the versions pinned for this project's CI machine.
    .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null \
        || .venv/bin/python -m pip install --quiet "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"
    .venv/bin/python -m pip install --quiet -e ".[test,tensorboard]"
    .venv/bin/python -m pip install --quiet --no-build-isolation -e examples/jemkit-clipped-sgld
    touch "$stamp"
fi
echo "jemkit installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
