#!/usr/bin/env bash
# Mutation testing of jemkit's core with cosmic-ray 8.x, on a PRIVATE COPY of the repository.
#
#   bash scripts/mutation.sh                 # planted bugs + every core module (sized for under an hour on 2 free cores)
#   bash scripts/mutation.sh scores distributed   # a subset (names: bash scripts/mutation.sh --list)
#   bash scripts/mutation.sh planted         # only the three planted bugs of issue 13
#
# What it does: snapshot the tracked and untracked-not-ignored files of this checkout once into a
# temp dir (your working tree is never written). Per module: copy the snapshot, make `jemkit` and
# `jemkit_plugins` import from that copy (PYTHONPATH; checked before anything runs), run the
# module's own test files once unmutated (baseline; its time sets the per-mutant timeout), let
# cosmic-ray generate every mutant of the module, keep a seeded sample of at most MUT_MAX of them,
# and run `pytest -x` on the module's test files plus tests/test_mutation_kills*.py once per mutant.
# Each module has its own copy, so MUT_JOBS modules run side by side.
# The three planted bugs of issue 13 are explicit patches (cosmic-ray has no operator that negates
# an expression, replaces a slice by the whole list, or edits YAML); each runs against its tests.
#
# Output: a per-module table (killed / survived / timeout / total, score %) on stdout and in
# $MUT_OUT/summary.md; each survivor's diff in $MUT_OUT/<module>.survivors.txt, each timed-out
# mutant's (counted as detected: its tests did not pass within the timeout) in <module>.timeouts.txt.
#
# Settings (environment):
#   MUT_MAX=30       most mutants run per module (a seeded sample when a module has more)
#   MUT_SEED=13      seed of that sample
#   MUT_JOBS=2       modules run at the same time (each a single-threaded pytest)
#   MUT_EXCLUDE=...  regex of cosmic-ray operators never run (default: replacements by bitwise and
#                    shift operators, which on tensors and floats only raise TypeError, and the
#                    random VariableReplacer/VariableInserter, which are not reproducible)
#   MUT_OUT=DIR      where the report goes (default: a new temp dir, printed at the end)
#   MUT_KEEP=1       keep the temp copies (default: removed at exit)
set -euo pipefail

# Run from a private copy of this script: bash reads a script as it goes, and others may edit the
# checkout's copy during the run.
if [[ -z "${_MUT_SELF:-}" ]]; then
    self="$(mktemp "${TMPDIR:-/tmp}/jemkit-mutation-sh.XXXXXX")"
    cp "$0" "$self"
    _MUT_SELF="$self" MUT_ROOT="$(cd "$(dirname "$0")/.." && pwd)" exec bash "$self" "$@"
fi
ROOT="$MUT_ROOT"
trap 'rm -f "$_MUT_SELF"' EXIT
PY="$ROOT/.venv/bin/python"
MUT_MAX=${MUT_MAX:-30}
MUT_SEED=${MUT_SEED:-13}
MUT_JOBS=${MUT_JOBS:-2}
MUT_EXCLUDE=${MUT_EXCLUDE:-'(_(RShift|LShift|BitOr|BitAnd|BitXor)$|VariableReplacer|VariableInserter)'}
export MUT_MAX MUT_SEED MUT_EXCLUDE
# One thread per pytest: MUT_JOBS processes share the cores; idle OpenMP threads sleep.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE PYTHONDONTWRITEBYTECODE=1

# name | file to mutate | test files (relative to the repository root)
MODULES="
scores|jemkit/evaluation/scores.py|tests/test_eval_scores.py
calibration|jemkit/evaluation/calibration.py|tests/test_eval_metrics.py tests/test_eval_stats.py
detection|jemkit/evaluation/detection.py|tests/test_eval_metrics.py tests/test_eval_stats.py
frechet|jemkit/evaluation/frechet.py|tests/test_eval_metrics.py
inception_score|jemkit/evaluation/inception_score.py|tests/test_eval_metrics.py
kid|jemkit/evaluation/kid.py|tests/test_eval_stats.py
diversity|jemkit/evaluation/diversity.py|tests/test_eval_stats.py
bootstrap|jemkit/evaluation/bootstrap.py|tests/test_eval_stats.py
losses|plugins/training/losses.py|tests/test_losses.py
distributed|jemkit/distributed.py|tests/test_local_slice.py tests/test_run_state.py
sampler|jemkit/sampler.py|tests/test_sampling.py tests/test_mcmc.py
samplers.sampling|plugins/samplers/sampling.py|tests/test_sampling.py tests/test_mcmc.py
samplers.mcmc|plugins/samplers/mcmc.py|tests/test_mcmc.py
samplers.jempp|plugins/samplers/jempp.py|tests/test_mcmc.py
samplers.informative|plugins/samplers/informative.py|tests/test_informative.py
contracts|jemkit/contracts.py|tests/test_contracts.py tests/test_testing_kit.py
checkpoint|jemkit/checkpoint.py|tests/test_checkpoint.py
config|jemkit/config.py|tests/test_recipe_values.py tests/test_recipes.py
"
# name | file in the copy | exact text | replacement | test files
PLANTED="
planted.log_px_negated|jemkit/evaluation/scores.py|parts[\"log_px\"].append(log_px.cpu())|parts[\"log_px\"].append(-log_px.cpu())|tests/test_eval_scores.py tests/test_eval_cli.py
planted.local_slice_whole_batch|jemkit/distributed.py|return batch_indices[info.rank * per_rank : (info.rank + 1) * per_rank]|return batch_indices|tests/test_local_slice.py tests/test_distributed.py
planted.reinit_freq_0.5|recipes/jem_cifar10.yaml|reinit_freq: 0.05}|reinit_freq: 0.5}|tests/test_recipe_values.py tests/test_recipes.py
"

if [[ "${1:-}" == "--list" ]]; then
    echo "planted (the three planted bugs)"; echo "$MODULES" | sed '/^$/d' | cut -d'|' -f1,2 | tr '|' '\t'
    exit 0
fi

# cosmic-ray 8.x into the project's venv (the script installs what it needs).
if ! "$PY" -c 'import cosmic_ray, sys; sys.exit(0 if __import__("importlib.metadata").metadata.version("cosmic-ray").startswith("8.") else 1)' 2>/dev/null; then
    "$ROOT/.venv/bin/pip" install -q 'cosmic-ray>=8,<9'
fi
CR="$ROOT/.venv/bin/cosmic-ray"

# Which modules: the arguments, or all (planted bugs first).
if [[ $# -eq 0 ]]; then
    SELECTED="planted $(echo "$MODULES" | sed '/^$/d' | cut -d'|' -f1 | tr '\n' ' ')"
else
    SELECTED="$*"
    for name in $SELECTED; do
        [[ "$name" == planted ]] || echo "$MODULES" | grep -q "^$name|" \
            || { echo "unknown module '$name'; see: bash scripts/mutation.sh --list" >&2; exit 2; }
    done
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/jemkit-mutation.XXXXXX")"
MUT_OUT="${MUT_OUT:-$WORK/report}"
mkdir -p "$MUT_OUT"
if [[ "${MUT_KEEP:-0}" != 1 ]]; then
    trap 'rm -rf "$WORK/copies" "$WORK/snapshot" "$_MUT_SELF"; rmdir "$WORK" 2>/dev/null || true' EXIT
fi

# One snapshot of the checkout (tracked + untracked-not-ignored files), taken once at the start, so
# every module sees the same sources even while others edit the working tree.
mkdir -p "$WORK/snapshot"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) \
    | tar -C "$ROOT" --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -C "$WORK/snapshot" -xf -
find "$WORK/snapshot" -name __pycache__ -prune -exec rm -rf {} +

# make_copy DIR: the snapshot under DIR/repo, and an import root DIR/imports whose `jemkit` and
# `jemkit_plugins` are the copy's jemkit/ and plugins/. PYTHONPATH comes before the editable
# install's finder (appended to sys.meta_path), so the copy wins; the check below proves it.
make_copy() {
    local dir="$1"
    mkdir -p "$dir/repo" "$dir/imports"
    cp -a "$WORK/snapshot/." "$dir/repo/"
    ln -s ../repo/jemkit "$dir/imports/jemkit"
    ln -s ../repo/plugins "$dir/imports/jemkit_plugins"
    (cd "$dir/repo" && PYTHONPATH="$dir/imports" "$PY" - "$dir") <<'EOF'
import os, sys
import jemkit, jemkit_plugins, jemkit.distributed, jemkit_plugins.training.losses
root = os.path.realpath(sys.argv[1])
for mod in (jemkit, jemkit_plugins, jemkit.distributed, jemkit_plugins.training.losses):
    path = os.path.realpath(mod.__file__)
    if not path.startswith(root + os.sep):
        sys.exit(f"mutation.sh: {mod.__name__} imports from {path}, not from the copy {root}")
EOF
}

# run_tests DIR TESTS...: pytest -x on the copy; exit status 0 = all passed.
run_tests() {
    local dir="$1"; shift
    (cd "$dir/repo" && PYTHONPATH="$dir/imports" "$PY" -m pytest -x -q -p no:cacheprovider "$@")
}

run_planted() {
    local dir="$WORK/copies/planted"
    make_copy "$dir" || { echo "[planted] the copy does not import itself; nothing run"; return 1; }
    echo "$PLANTED" | sed '/^$/d' | while IFS='|' read -r name file old new tests; do
        local target="$dir/repo/$file"
        cp "$target" "$target.orig"
        "$PY" - "$target" "$old" "$new" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"mutation.sh: planted bug: {old!r} occurs {text.count(old)} times in {path}, expected once")
open(path, "w").write(text.replace(old, new))
EOF
        local start=$SECONDS outcome by=""
        # shellcheck disable=SC2086
        if run_tests "$dir" $tests >"$MUT_OUT/$name.log" 2>&1; then outcome=survived; else
            outcome=killed; by="$(grep -m1 -o '^FAILED [^ ]*' "$MUT_OUT/$name.log" | cut -c8- || true)"
        fi
        mv "$target.orig" "$target"
        printf '%s|%s|%s|%s|%s|%ss\n' "$name" "$file" "$outcome" "${by:-(no test failed; see log)}" "$tests" "$((SECONDS - start))" >>"$MUT_OUT/planted.rows"
        echo "[planted] $name: $outcome ${by:+by $by }($((SECONDS - start)) s)"
    done
}

run_module() {
    local name="$1" line file tests dir
    line="$(echo "$MODULES" | grep "^$name|")"
    file="$(echo "$line" | cut -d'|' -f2)"; tests="$(echo "$line" | cut -d'|' -f3)"
    dir="$WORK/copies/$name"
    make_copy "$dir" || return 1
    # The kill tests written for survivors (tests/test_mutation_kills*.py) run with every module.
    for kills in tests/test_mutation_kills.py tests/test_mutation_kills_2.py; do
        [[ -f "$dir/repo/$kills" ]] && tests="$tests $kills"
    done
    # Baseline: the unmutated copy passes, and its time sets the per-mutant timeout.
    local start=$SECONDS
    # shellcheck disable=SC2086
    if ! run_tests "$dir" $tests >"$MUT_OUT/$name.baseline.log" 2>&1; then
        echo "[$name] baseline FAILED (see $MUT_OUT/$name.baseline.log); module skipped"
        printf '%s|%s|baseline failed\n' "$name" "$file" >>"$MUT_OUT/modules.rows"
        return 0
    fi
    local base=$((SECONDS - start)) timeout
    timeout=$((base * 4 + 30))
    cat >"$dir/cr.toml" <<EOF
[cosmic-ray]
module-path = "$file"
timeout = $timeout.0
excluded-modules = []
test-command = "$PY -m pytest -x -q -p no:cacheprovider $tests"

[cosmic-ray.distributor]
name = "local"
EOF
    (cd "$dir/repo" && "$CR" init "$dir/cr.toml" "$dir/session.sqlite") >"$MUT_OUT/$name.init.log" 2>&1
    # Keep a seeded sample of at most MUT_MAX mutants; the others are marked skipped.
    "$PY" - "$dir/session.sqlite" "$name" <<'EOF'
import os, random, re, sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import WorkResult, WorkerOutcome
session, name = sys.argv[1:]
exclude = re.compile(os.environ["MUT_EXCLUDE"])
with use_db(session, WorkDB.Mode.open) as db:
    items = sorted(db.pending_work_items, key=lambda w: (w.mutations[0].start_pos, w.mutations[0].operator_name, w.mutations[0].occurrence))
    eligible = [w for w in items if not exclude.search(w.mutations[0].operator_name)]
    limit = int(os.environ["MUT_MAX"])
    keep = eligible if len(eligible) <= limit else random.Random(f"{os.environ['MUT_SEED']}:{name}").sample(eligible, limit)
    keep_ids = {w.job_id for w in keep}
    skip = [w.job_id for w in items if w.job_id not in keep_ids]
    if skip:
        db.set_multiple_results(skip, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not sampled"))
    print(f"[{name}] {len(items)} generated, {len(eligible)} eligible, {len(keep)} run")
EOF
    echo "[$name] baseline ${base} s, timeout ${timeout} s"
    (cd "$dir/repo" && PYTHONPATH="$dir/imports" "$CR" exec "$dir/cr.toml" "$dir/session.sqlite") \
        >"$MUT_OUT/$name.exec.log" 2>&1 || echo "[$name] cosmic-ray exec exited non-zero (see $MUT_OUT/$name.exec.log)"
    "$PY" - "$dir/session.sqlite" "$name" "$file" "$MUT_OUT" "$((SECONDS - start))" <<'EOF'
import sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import TestOutcome, WorkerOutcome
session, name, file, out, seconds = sys.argv[1:]
killed = survived = timeout = other = generated = 0
survivors = []
timeouts = []
with use_db(session, WorkDB.Mode.open) as db:
    generated = db.num_work_items
    results = dict(db.results)
    items = {w.job_id: w for w in db.work_items}
for job_id, r in results.items():
    if r.worker_outcome == WorkerOutcome.SKIPPED:
        continue
    if r.worker_outcome != WorkerOutcome.NORMAL or r.test_outcome == TestOutcome.INCOMPETENT:
        other += 1
    elif r.test_outcome == TestOutcome.SURVIVED:
        survived += 1
        m = items[job_id].mutations[0]
        survivors.append(f"--- {m.operator_name} #{m.occurrence} at line {m.start_pos[0]}\n{r.diff}\n")
    elif r.output == "timeout":
        timeout += 1
        m = items[job_id].mutations[0]
        timeouts.append(f"--- {m.operator_name} #{m.occurrence} at line {m.start_pos[0]}\n{r.diff}\n")
    else:
        killed += 1
pending = sum(1 for j in items if j not in results)
total = killed + survived + timeout + other
score = 100.0 * (killed + timeout) / max(1, killed + survived + timeout)
with open(f"{out}/modules.rows", "a") as f:
    f.write(f"{name}|{file}|{killed}|{survived}|{timeout}|{other}|{total}|{generated}|{score:.1f}|{seconds}|{pending}\n")
with open(f"{out}/{name}.survivors.txt", "w") as f:
    f.write("".join(sorted(survivors)))
with open(f"{out}/{name}.timeouts.txt", "w") as f:
    f.write("".join(sorted(timeouts)))
print(f"[{name}] {killed} killed, {survived} survived, {timeout} timeout, {other} other of {total} run ({generated} generated); score {score:.1f}%; {seconds} s")
EOF
}

: >"$MUT_OUT/modules.rows"; : >"$MUT_OUT/planted.rows"
mkdir -p "$WORK/copies"
for name in $SELECTED; do
    if [[ "$name" == planted ]]; then
        run_planted || printf '%s|-|error|-|-|-\n' planted >>"$MUT_OUT/planted.rows"
    else
        while (( $(jobs -rp | wc -l) >= MUT_JOBS )); do wait -n || true; done
        { run_module "$name" || { echo "[$name] FAILED (exit $?)"; printf '%s|-|script error\n' "$name" >>"$MUT_OUT/modules.rows"; }; } &
    fi
done
wait

{
    echo "## Mutation testing ($(date -u +%Y-%m-%dT%H:%MZ), cosmic-ray $("$PY" -c 'import importlib.metadata as m; print(m.version("cosmic-ray"))'), MUT_MAX=$MUT_MAX MUT_SEED=$MUT_SEED)"
    echo
    if [[ -s "$MUT_OUT/planted.rows" ]]; then
        echo "| planted bug | file | outcome | first failing test | tests run | time |"
        echo "|---|---|---|---|---|---|"
        sed 's/|/ | /g; s/^/| /; s/$/ |/' "$MUT_OUT/planted.rows"
        echo
    fi
    if [[ -s "$MUT_OUT/modules.rows" ]]; then
        echo "| module | file | killed | survived | timeout | other | total run | generated | score % | time s | not run |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        sort "$MUT_OUT/modules.rows" | sed 's/|/ | /g; s/^/| /; s/$/ |/'
    fi
} >"$MUT_OUT/summary.md"
cat "$MUT_OUT/summary.md"
echo
echo "report: $MUT_OUT (survivor diffs: <module>.survivors.txt)"
if grep -q '|survived|' "$MUT_OUT/planted.rows"; then exit 1; fi
