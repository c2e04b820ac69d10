#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before `benchmarks/gpu_check.sh`: the lent GPU machine has
# torch, pluggy, rich, safetensors, scikit-learn, torchmetrics and pytest, but no omegaconf and no
# package index. This puts an omegaconf wheel (pure Python; its one dependency, PyYAML, is there)
# into .whl/, which git ignores through .git/info/exclude and the device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PY=${PYTHON:-python3}
"$PY" -m pip download --no-deps --only-binary=:all: -q -d .whl "omegaconf>=2.3"
ls -l .whl
