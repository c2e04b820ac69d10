#!/usr/bin/env bash
# Calibration ablation of the JEM digits recipe over seeds: the p(x) weight (loss.px).
#
#   bash scripts/calibration_ablation.sh            # -> docs/results_ablation_px.md
#
# Needs the JEM sweep of scripts/results.py (runs/results/jem, px = 1.0, seeds 1-5); trains
# recipes/jem_digits.yaml with loss.px = 0.3, 0.2 and 0.1 over seeds 1-3 (runs/ablation_px and
# runs/ablation_px_mid; a complete sweep is not trained again), evaluates every member without a report (accuracy, calibration, OOD, generation;
# each section of `jemkit eval` reseeds, so these numbers equal those of the full evaluations of
# the px = 1.0 runs), and writes `jemkit compare --group-by loss.px` of px = 1.0 (seeds 1-3) and
# the ablation as Markdown.
#
# Settings (environment): JEMKIT (default .venv/bin/jemkit), RUNS (default runs), JOBS (default 2),
# OUT (default docs/results_ablation_px.md).
set -euo pipefail
cd "$(dirname "$0")/.."
JEMKIT=${JEMKIT:-.venv/bin/jemkit}
RUNS=${RUNS:-runs}
JOBS=${JOBS:-2}
OUT=${OUT:-docs/results_ablation_px.md}
SEEDS=1,2,3
BASE=(); for s in ${SEEDS//,/ }; do BASE+=("$RUNS/results/jem/seed=$s"); done
for run in "${BASE[@]}"; do
    if [[ ! -e "$run/eval/latest/report.json" ]]; then
        echo "error: $run has no evaluation. Run scripts/results.py first (its JEM sweep is the px = 1.0 arm)." >&2
        exit 2
    fi
done
# sweep directory : p(x) weights (the 0.2 arm was added after the first two, as its own sweep)
ARMS="ablation_px:0.3,0.1 ablation_px_mid:0.2"
DIRS=()
for arm in $ARMS; do
    dir="$RUNS/${arm%%:*}" px="${arm#*:}"
    DIRS+=("$dir")
    if [[ -d "$dir" ]]; then
        "$JEMKIT" run --resume "$dir" --jobs "$JOBS" >/dev/null
    else
        "$JEMKIT" run recipes/jem_digits.yaml -m "loss.px=$px" --seeds "$SEEDS" --jobs "$JOBS" --out "$dir" >/dev/null
    fi
done
todo=()
for dir in "${DIRS[@]}"; do
    for run in "$dir"/seed=*/; do
        [[ -e "$run/eval/latest/report.json" ]] || todo+=("${run%/}")
    done
done
if ((${#todo[@]})); then
    printf '%s\n' "${todo[@]}" | xargs -P "$JOBS" -I{} env OMP_NUM_THREADS=1 "$JEMKIT" eval {} \
        --only acc,calibration,ood,generation --bootstrap 0 >/dev/null
fi
METRICS='eval.accuracy.clean,eval.accuracy.nll,eval.calibration.ece,eval.calibration.temperature_scaled.ece'
METRICS+=',eval.ood.*.log_px.auroc,eval.generation.fresh.conditional.class_accuracy,wall_seconds'
"$JEMKIT" compare "${BASE[@]}" "${DIRS[@]}" --group-by loss.px --metrics "$METRICS" --md "$OUT"
echo "wrote $OUT"
