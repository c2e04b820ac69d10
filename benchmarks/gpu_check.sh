#!/usr/bin/env bash
# The prepared GPU check (issue 6): one script, one device call, everything written to $OUT.
#
#   here:    bash benchmarks/gpu_prepare.sh
#   device:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=360)
#   rerun of some stages only (a session has 15 device minutes, start-up included):
#            run(command="GPU_CHECK_STAGES='tests compile' bash benchmarks/gpu_check.sh", ...)
#
# Stages, in order of priority, each under its own time limit inside GPU_CHECK_SECONDS (default
# 330), so a run cut short still returns the most important numbers:
#   levers   levers.json/.txt: benchmarks/step_cost.py --levers on recipes/jem_cifar10.yaml
#            (WRN-28-10, batch 64, K = 20, random CIFAR-shaped data), every lever on and off, the
#            CUDA configurations, projected hours for 150 epochs of the recipe's 45,000 images
#   runs     two real `jemkit run`s of the CIFAR-10 recipe, 120 steps each, on a full-size random
#            CIFAR-10 (50,000 training images): recipe defaults against the fast options
#   tests    gpu_tests.log: pytest -m gpu (real CUDA graphs, bf16, a CUDA run, torchrun on CUDA)
#   compile  levers_compile.json: the torch.compile configurations (slow to build), if time is left
# Always: env.txt (GPU, driver, torch), summary.md (the tables for benchmarks/README.md, made by
# benchmarks/gpu_summary.py), check.log (everything printed). At most 7 files: the device tool
# returns 8.
#
# GPU_CHECK_SMOKE=1 runs the same stages on CPU with a tiny network and tiny data, to check the
# script itself without a GPU (tests/test_gpu_check_script.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jemkit-gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/check.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-330}
STAGES=" ${GPU_CHECK_STAGES:-levers runs tests compile} "
left() { echo $((BUDGET - SECONDS)); }
# limit WANT [KEEP]: WANT seconds, or fewer so that KEEP seconds stay for the later stages
limit() { local rest=$(( $(left) - ${2:-0} )); (( $1 < rest )) && echo "$1" || echo $(( rest > 10 ? rest : 10 )); }
stage() { [[ $STAGES == *" $1 "* ]]; }

echo "== setup ($(date -u +%FT%TZ)), stages:$STAGES"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jemkit-gpu-check.XXXXXX")
SITE=$WORK/site
mkdir -p "$SITE"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
fi
ln -sfn "$PWD/plugins" "$SITE/jemkit_plugins"     # the package-dir mapping of pyproject.toml
export PYTHONPATH="$SITE:$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import omegaconf, jemkit, jemkit_plugins" || { echo "jemkit does not import; run gpu_prepare.sh here first"; exit 1; }

{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" - <<'PYEOF'
import sys, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "python", sys.version.split()[0])
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(props.name, props.multi_processor_count, "SMs", f"{props.total_memory / 2**30:.0f} GiB")
else:
    print("no CUDA device")
PYEOF
  echo "$(nproc) CPU cores"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [[ ${GPU_CHECK_SMOKE:-0} == 1 ]]; then
  DEVICE=cpu FULL_PER_BATCH=40 STEPS=4 LOG_EVERY=2 TIMING=(--repeats 1 --iters 1 --warmup 0 --threads 1)
  TINY=(model.backbone.depth=10 model.backbone.widen_factor=1 sampler.steps=2 sampler.init.size=64 train.batch_size=8)
  RUN_TINY=("${TINY[@]}" data.val_size=20)
else
  DEVICE=cuda FULL_PER_BATCH=10000 STEPS=120 LOG_EVERY=30 TIMING=(--repeats 3 --iters 1 --warmup 1)
  TINY=() RUN_TINY=()
fi

DATA=$WORK/data
"$PY" - "$DATA" "$FULL_PER_BATCH" <<'PYEOF'
import sys
from pathlib import Path
from fakedata import write_fake_cifar10
root, full = Path(sys.argv[1]), int(sys.argv[2])
write_fake_cifar10(root / "small", n_per_batch=20)      # 100 images: enough for one batch
write_fake_cifar10(root / "full", n_per_batch=full)     # 10,000 per batch: CIFAR-10's real size
PYEOF
echo "data written ($SECONDS s)"

BENCH=(benchmarks/step_cost.py recipes/jem_cifar10.yaml "data.root=$DATA/small" data.download=false data.val_size=0
       "${TINY[@]}" --device "$DEVICE" --levers "${TIMING[@]}" --epochs 150 --train-size 45000)
if stage levers; then
  t=$(limit 130 190)
  echo "== levers (limit $t s)"
  timeout "$t" "$PY" "${BENCH[@]}" --json "$OUT/levers.json" | tee "$OUT/levers.txt"
fi

if stage runs; then
  FAST=(performance.autocast=bf16 performance.cuda_graphs=true sampler.init.on_device=true)
  for variant in default fast; do
    extra=(); [[ $variant == fast ]] && extra=("${FAST[@]}")
    t=$(limit 70 70)
    echo "== run $variant (limit $t s)"
    timeout "$t" "$PY" -m jemkit run recipes/jem_cifar10.yaml --out "$WORK/run-$variant" "data.root=$DATA/full" \
      data.download=false "device=$DEVICE" "train.max_steps=$STEPS" "train.log_every=$LOG_EVERY" \
      train.samples_per_class=2 "${RUN_TINY[@]}" "${extra[@]}" > "$WORK/run-$variant.log" 2>&1
    echo "exit $?" >> "$WORK/run-$variant.log"
    tail -5 "$WORK/run-$variant.log"
  done
fi

if stage tests; then
  t=$(limit 90 0)
  echo "== pytest -m gpu (limit $t s)"
  timeout "$t" "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -k "not compiled" \
    > "$OUT/gpu_tests.log" 2>&1
  tail -15 "$OUT/gpu_tests.log"
fi

if stage compile && [[ $DEVICE == cuda ]] && (( $(left) > 60 )); then
  t=$(limit 300 0)
  echo "== compile configurations (limit $t s)"
  timeout "$t" "$PY" "${BENCH[@]}" --with-compile --only reference --only compile \
    --json "$OUT/levers_compile.json" | tee -a "$OUT/levers.txt"
fi

echo "== summary"
"$PY" benchmarks/gpu_summary.py "$OUT" "$WORK/run-default" "$WORK/run-fast" > "$OUT/summary.md"
cat "$OUT/summary.md"
echo "done in $SECONDS s"
