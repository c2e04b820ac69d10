"""Regenerate docs/results.md: the digits recipes over seeds, evaluated, compared, and the JEM
paper's claims tested.

    .venv/bin/python scripts/results.py                       # 6 recipes x 5 seeds -> docs/results.md
    .venv/bin/python scripts/results.py --tiny --recipes baseline,jem --seeds 1,2 \\
        --runs-dir /tmp/r --out /tmp/r/results.md              # the pipeline in a minute

Steps, each resumable (a second call does only what is missing):

1. one sweep per recipe, ``jemkit run recipes/<recipe>_digits.yaml --seeds S --out RUNS/<key>``
   (``--jobs`` members at a time); an existing sweep is finished with ``jemkit run --resume``;
2. ``jemkit eval RUN`` on every completed member without an eval report (``--jobs`` at a time);
3. ``jemkit compare`` (:func:`jemkit.compare.compare`) over all members, grouped by recipe:
   its full table goes to ``<out stem>_compare.md``, the chosen numbers to ``--out`` as one
   table per topic (mean ± sample sd and the 95% Student-t interval of the mean over seeds);
4. the claims table: each claim of the JEM paper (Grathwohl et al. 2020) for each JEM-family
   recipe against the baseline, decided by the rule in :func:`better_verdict` and
   :func:`close_verdict` (Welch's t-test over seeds, two-sided, alpha 0.05).

Units: accuracies, ECE, AUROC and FPR95 are fractions in [0, 1]; NLL in nats; wall times in
seconds; PGD epsilons in the models' [-1, 1] input units.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from jemkit.compare import Comparison, Stats, compare, describe, markdown, run_numbers, sd_decimals
from jemkit.errors import JemkitError
from jemkit.run_index import RunInfo, eval_report_path, find_runs, read_run

ROOT = Path(__file__).resolve().parents[1]

#: Short name -> recipe file of the digits recipes, in table order; ``baseline`` is the reference.
RECIPES: dict[str, str] = {
    "baseline": "baseline_digits.yaml",
    "jem": "jem_digits.yaml",
    "jempp": "jempp_digits.yaml",
    "sadajem": "sadajem_digits.yaml",
    "energy_l2": "jem_energy_l2_digits.yaml",
    "shortrun": "jem_shortrun_digits.yaml",
}
BASELINE = "baseline"
DEFAULT_SEEDS = "1,2,3,4,5"
DEFAULT_OUT = ROOT / "docs" / "results.md"
DEFAULT_RUNS = ROOT / "runs" / "results"

#: Options of every ``jemkit eval``: the JEM defence (refinement before classifying) as measured
#: for the one-seed doc, on the first 100 test inputs (the defence costs many times the attack).
FULL_EVAL: tuple[str, ...] = ("--defence", "--robust-n", "100", "--defence-steps", "5", "--defence-copies", "2")

#: ``--tiny``: a few training steps of small networks, and small evaluation settings.
TINY_TRAIN: tuple[str, ...] = (
    "train.epochs=2",
    "train.batch_size=256",
    "model.backbone.channels=[8,16,16]",
    "model.backbone.feature_dim=16",
    "sampler.steps=2",
    "train.samples_per_class=1",
    "train.sample_extra_steps=0",
    "loggers=[]",
    "performance.autocast=none",
    "performance.channels_last=false",
)
TINY_EVAL: tuple[str, ...] = (
    "--max-test", "60", "--bootstrap", "20", "--ood-n", "60", "--robust-n", "20", "--pgd-steps", "2",
    "--eps", "0,0.1", "--eps-l2", "0,0.5", "--refine-steps", "2", "--n-samples", "50", "--steps", "5",
    "--kid-subsets", "5", "--kid-subset-size", "20", "--grid-per-class", "2",
    "--defence", "--defence-steps", "1", "--defence-copies", "1",
)

#: Significance level of the claims' tests, and the accuracy margin of "close to the baseline".
ALPHA = 0.05
ACCURACY_MARGIN = 0.01

HOLDS, DOES_NOT_HOLD, NOT_SIGNIFICANT, NOT_MEASURED = "holds", "does not hold", "not significant", "not measured"
VERDICTS = (HOLDS, DOES_NOT_HOLD, NOT_SIGNIFICANT, NOT_MEASURED)


class ResultsError(JemkitError):
    """A sweep or an evaluation of the results pipeline failed, or its options are wrong."""


# ---------------------------------------------------------------------- the decision rule
@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim test: method values against baseline values (one per seed)."""

    verdict: str
    #: ``mean(method) - mean(baseline)``; ``None`` when a side has no value.
    difference: float | None = None
    #: Welch 95% interval of the difference (``None`` with fewer than 2 values on a side).
    ci_low: float | None = None
    ci_high: float | None = None
    #: Two-sided Welch p-value (``None`` with fewer than 2 values on a side).
    p_value: float | None = None
    n_method: int = 0
    n_baseline: int = 0


def welch(method: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(difference, ci_low, ci_high, p)`` of Welch's unequal-variance t-test of ``mean(method) -
    mean(baseline)``: the two-sided p-value and the ``level`` interval of the difference with the
    Welch-Satterthwaite degrees of freedom. Both sides need at least 2 values. With no spread on
    either side the difference is exact: interval ``[d, d]``, ``p = 0`` (``1`` when ``d == 0``).
    """
    from scipy.stats import t

    a, b = describe(method), describe(baseline)
    if a.sd is None or b.sd is None:
        raise ValueError("welch() needs at least two values on each side")
    difference = a.mean - b.mean
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:
        return difference, difference, difference, 1.0 if difference == 0.0 else 0.0
    dof = (va + vb) ** 2 / ((va**2 / (a.n - 1) if va else 0.0) + (vb**2 / (b.n - 1) if vb else 0.0))
    p_value = float(2.0 * t.sf(abs(difference) / se, dof))
    half = float(t.ppf(0.5 + level / 2, dof)) * se
    return difference, difference - half, difference + half, p_value


def _tested(method: Sequence[float], baseline: Sequence[float]) -> Verdict | None:
    """The verdict for sides too small to test (``None`` when both have 2 or more values)."""
    n_m, n_b = len(method), len(baseline)
    if n_m == 0 or n_b == 0:
        return Verdict(NOT_MEASURED, n_method=n_m, n_baseline=n_b)
    if n_m < 2 or n_b < 2:
        return Verdict(NOT_SIGNIFICANT, describe(method).mean - describe(baseline).mean, n_method=n_m, n_baseline=n_b)
    return None


def better_verdict(
    method: Sequence[float], baseline: Sequence[float], higher_is_better: bool, alpha: float = ALPHA
) -> Verdict:
    """Claim "the method is better than the baseline" (higher or lower values, as stated).

    Rule: Welch's two-sided t-test over seeds. ``p < alpha`` with the difference in the claimed
    direction: *holds*; ``p < alpha`` the other way: *does not hold*; ``p >= alpha`` or fewer than
    two seeds on a side: *not significant*; no value on a side: *not measured*.
    """
    early = _tested(method, baseline)
    if early is not None:
        return early
    difference, low, high, p_value = welch(method, baseline, 1.0 - alpha)
    if p_value >= alpha:
        verdict = NOT_SIGNIFICANT
    else:
        verdict = HOLDS if (difference > 0) == higher_is_better else DOES_NOT_HOLD
    return Verdict(verdict, difference, low, high, p_value, len(method), len(baseline))


def close_verdict(
    method: Sequence[float], baseline: Sequence[float], margin: float = ACCURACY_MARGIN, alpha: float = ALPHA
) -> Verdict:
    """Claim "the method is not worse than the baseline by more than ``margin``" (non-inferiority).

    Rule: the Welch ``1 - alpha`` interval of ``mean(method) - mean(baseline)``. Entirely above
    ``-margin``: *holds*; entirely below ``-margin``: *does not hold*; containing ``-margin`` or
    fewer than two seeds on a side: *not significant*; no value on a side: *not measured*.
    """
    early = _tested(method, baseline)
    if early is not None:
        return early
    difference, low, high, p_value = welch(method, baseline, 1.0 - alpha)
    if low > -margin:
        verdict = HOLDS
    elif high < -margin:
        verdict = DOES_NOT_HOLD
    else:
        verdict = NOT_SIGNIFICANT
    return Verdict(verdict, difference, low, high, p_value, len(method), len(baseline))


# ---------------------------------------------------------------------- the claims
Numbers = dict[str, float]
Measure = Callable[[Numbers], "float | None"]


@dataclass(frozen=True)
class Claim:
    """One claim of the JEM paper, read as a comparison of a per-run number."""

    claim: str
    #: What is compared, for the table.
    measure: str
    #: The method's number of one run, and the baseline's (``None``: the run lacks it).
    method_value: Measure
    baseline_value: Measure
    #: ``higher``, ``lower`` (better) or ``close`` (non-inferiority within the accuracy margin).
    kind: str


def _key(name: str) -> Measure:
    return lambda numbers: numbers.get(name)


def _mean_attack(kind: str, norm: str, field: str) -> Measure:
    """Mean over the non-zero epsilons of ``eval.robustness.<kind>.<norm>.<i>.<field>``."""

    def value(numbers: Numbers) -> float | None:
        values, index = [], 0
        while f"eval.robustness.{kind}.{norm}.{index}.eps" in numbers:
            eps = numbers[f"eval.robustness.{kind}.{norm}.{index}.eps"]
            got = numbers.get(f"eval.robustness.{kind}.{norm}.{index}.{field}")
            if eps > 0 and got is not None:
                values.append(got)
            index += 1
        return math.fsum(values) / len(values) if values else None

    return value


def claims(ood_sets: Sequence[str], norms: Sequence[str]) -> list[Claim]:
    """The claims tested, for the OOD sets and attack norms the reports hold."""
    out = [
        Claim(
            "accuracy close to the baseline", f"test accuracy, within {ACCURACY_MARGIN:g}",
            _key("eval.accuracy.clean"), _key("eval.accuracy.clean"), "close",
        ),
        Claim("better calibration", "ECE, 15 bins (lower)", _key("eval.calibration.ece"), _key("eval.calibration.ece"), "lower"),
    ]
    for score, label in (("log_px", "log p(x)"), ("grad_norm", "grad-norm")):
        for ood in ood_sets:
            name = f"eval.ood.{ood}.{score}.auroc"
            out.append(Claim(f"better OOD detection with {label}", f"AUROC, {ood} (same score)", _key(name), _key(name), "higher"))
    names = {"linf": "L-inf", "l2": "L2"}
    for norm in norms:
        undefended = _mean_attack("attacks", norm, "accuracy")
        defended = _mean_attack("defended", norm, "worst")
        label = names.get(norm, norm)
        out.append(
            Claim("more robust without refinement", f"PGD {label} accuracy, mean over eps > 0", undefended, undefended, "higher")
        )
        out.append(
            Claim(
                "more robust with SGLD refinement",
                f"PGD {label}: defended (worst of adaptive, transfer) vs baseline undefended, mean over eps > 0",
                defended, undefended, "higher",
            )
        )
    out.append(
        Claim(
            "class-conditional generation", "sample accuracy (digits classifier)",
            _key("eval.generation.fresh.conditional.class_accuracy"),
            _key("eval.generation.fresh.conditional.class_accuracy"), "higher",
        )
    )
    out.append(
        Claim(
            "class-conditional generation", "digits-FID of class-conditional samples (lower)",
            _key("eval.generation.fresh.conditional.fid"), _key("eval.generation.fresh.conditional.fid"), "lower",
        )
    )
    return out


def decide(claim: Claim, method: Sequence[float], baseline: Sequence[float]) -> Verdict:
    """The verdict of ``claim`` on these per-seed values."""
    if claim.kind == "close":
        return close_verdict(method, baseline)
    return better_verdict(method, baseline, higher_is_better=claim.kind == "higher")


# ---------------------------------------------------------------------- running
def recipe_path(key: str) -> Path:
    if key not in RECIPES:
        raise ResultsError(f"Unknown recipe {key!r}. Choose from {', '.join(RECIPES)} (comma-separated).")
    return ROOT / "recipes" / RECIPES[key]


def _jemkit(*words: str) -> list[str]:
    return [sys.executable, "-m", "jemkit", *words]


def sweep(
    key: str,
    seeds: str,
    runs_dir: Path,
    jobs: int,
    overrides: Sequence[str],
    recipe: Path | None = None,
    env: dict[str, str] | None = None,
) -> Path:
    """Train (or finish) the sweep ``runs_dir/key`` of ``recipe`` (default: the digits recipe
    ``key``) with ``overrides`` over ``seeds``, ``env`` added to the environment; its directory."""
    from jemkit.sweep import is_sweep_dir, load_sweep

    sweep_dir = runs_dir / key
    recipe = recipe_path(key) if recipe is None else recipe
    if is_sweep_dir(sweep_dir):
        record = load_sweep(sweep_dir)
        wanted = [s.strip() for s in seeds.split(",")]
        if record.grid.get("seed") != wanted:
            raise ResultsError(
                f"{sweep_dir} is a sweep over seeds {','.join(record.grid.get('seed', []))}, not {seeds}. "
                "Pass the same --seeds, or another --runs-dir for a new set of sweeps."
            )
        stale = _stale(sweep_dir, record.recipe_copy, record.base_overrides, recipe, overrides)
        if stale:
            raise ResultsError(
                f"{sweep_dir} was trained with {stale}, so its numbers are not this recipe's. Move that sweep "
                "away (or pass another --runs-dir) and run this script again to train the recipe as it is now."
            )
        if all((sweep_dir / m.name / "summary.json").is_file() for m in record.members):
            return sweep_dir
        command = _jemkit("run", "--resume", str(sweep_dir), "--jobs", str(jobs))
    else:
        command = _jemkit("run", str(recipe), "--seeds", seeds, "--out", str(sweep_dir), "--jobs", str(jobs))
        command += list(overrides)
    shown = " ".join(f"{name}={value}" for name, value in (env or {}).items())
    print(f"[{key}] {shown + ' ' if shown else ''}{shlex.join(command)}", flush=True)
    code = subprocess.run(command, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}).returncode
    if code != 0:
        raise ResultsError(
            f"The sweep {sweep_dir} did not complete (exit {code}); its members' logs are in {sweep_dir / 'logs'}. "
            f"Fix the cause and run this script again: it finishes the sweep with `jemkit run --resume {sweep_dir}`."
        )
    return sweep_dir


def _stale(sweep_dir: Path, copy: str, trained: Sequence[str], recipe: Path, overrides: Sequence[str]) -> str:
    """What differs between the experiment a sweep ran (its stored recipe and overrides) and the one
    asked for ("" if nothing). Compares the resolved configurations, so an edited comment or an
    override that the recipe now holds itself does not make a sweep stale."""
    from omegaconf import OmegaConf

    from jemkit.config import load_recipe

    if not (sweep_dir / copy).is_file():
        return ""  # a missing copy is load_sweep's or the resume's error to report
    before = OmegaConf.to_container(load_recipe(sweep_dir / copy, list(trained)), resolve=True)
    now = OmegaConf.to_container(load_recipe(recipe, list(overrides)), resolve=True)
    assert isinstance(before, dict) and isinstance(now, dict)
    changed = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if not changed:
        return ""
    return f"other settings of {', '.join(changed)} than {recipe.name}{' with ' + ' '.join(overrides) if overrides else ''} has now"


def evaluate_runs(run_dirs: Sequence[Path], eval_args: Sequence[str], jobs: int) -> None:
    """``jemkit eval`` on every run of ``run_dirs`` without an eval report, ``jobs`` at a time."""
    from jemkit.sweep import member_env

    todo = [run for run in run_dirs if eval_report_path(run) is None]
    env = member_env(jobs)

    def one(run: Path) -> tuple[Path, int]:
        log = run.parent / "logs" / f"eval-{run.name}.log"
        log.parent.mkdir(exist_ok=True)
        command = _jemkit("eval", str(run), *eval_args)
        print(f"[eval] {shlex.join(command)}", flush=True)
        with open(log, "a", encoding="utf-8") as handle:
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env).returncode
        return log, code

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        failed = [(log, code) for log, code in pool.map(one, todo) if code != 0]
    if failed:
        raise ResultsError(
            f"{len(failed)} evaluation(s) failed: {', '.join(f'{log} (exit {code})' for log, code in failed)}. "
            "Fix the cause and run this script again; evaluated runs are skipped."
        )


# ---------------------------------------------------------------------- tables
def cell(stats: Stats | None, n_expected: int | None = None) -> str:
    """``mean ± sd [low, high]`` to the decimals of the sd's two significant digits; ``(n=k)``
    added when ``k`` differs from the group's run count; empty without stats."""
    if stats is None:
        return ""
    if stats.sd is None:
        text = f"{stats.mean:.4g}"
    else:
        places = sd_decimals(stats.sd)
        show = (lambda v: f"{v:.4g}") if places is None else (lambda v: f"{v:.{places}f}")
        text = f"{show(stats.mean)} ± {show(stats.sd)} [{show(stats.ci_low)}, {show(stats.ci_high)}]"
    if n_expected is not None and stats.n != n_expected:
        text += f" (n={stats.n})"
    return text


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


LABELS: dict[str, str] = {
    "test/acc": "test accuracy at the end of training",
    "test/loss": "test NLL at the end of training (nats)",
    "eval.accuracy.clean": "test accuracy",
    "eval.accuracy.refined": "accuracy after SGLD refinement",
    "eval.accuracy.nll": "test NLL (nats)",
    "eval.calibration.ece": "ECE (15 bins)",
    "eval.calibration.temperature_scaled.ece": "ECE after temperature scaling",
    "wall_seconds": "training wall time (s)",
}
GENERATION_FIELDS = {
    "fid": "digits-FID",
    "inception_score.mean": "digits-IS",
    "class_accuracy": "class-conditional sample accuracy",
    "kid.mean": "digits-KID",
    "precision": "precision",
    "recall": "recall",
    "diversity": "diversity",
}


def sections(metrics: Sequence[str], eps_of: Callable[[str], float | None]) -> list[tuple[str, list[tuple[str, str]]]]:
    """``(title, [(metric, label), ...])`` per topic, from the metric names the runs have."""
    have = set(metrics)
    accuracy = [(m, LABELS[m]) for m in ("eval.accuracy.clean", "eval.accuracy.refined", "eval.accuracy.nll",
                                          "eval.calibration.ece", "eval.calibration.temperature_scaled.ece",
                                          "test/acc", "test/loss") if m in have]
    ood = []
    for m in metrics:
        parts = m.split(".")
        if len(parts) == 5 and parts[:2] == ["eval", "ood"] and parts[4] in ("auroc", "fpr95"):
            ood.append((m, f"{parts[2]}: {parts[3]} {parts[4].upper()}"))
    robust = []
    for m in metrics:
        parts = m.split(".")
        if len(parts) == 6 and parts[:2] == ["eval", "robustness"] and parts[2] in ("attacks", "defended") and parts[5] != "eps":
            eps = eps_of(".".join(parts[:5]) + ".eps")
            what = "PGD" if parts[2] == "attacks" else f"defended ({parts[5]})"
            robust.append((m, f"{what} {parts[3]} eps {_number(eps)}"))
    generation = []
    for source in ("fresh.conditional", "fresh.unconditional", "buffer"):
        for field, label in GENERATION_FIELDS.items():
            m = f"eval.generation.{source}.{field}"
            if m in have:
                generation.append((m, f"{source.replace('.', ' ')}: {label}"))
    wall = [("wall_seconds", LABELS["wall_seconds"])] if "wall_seconds" in have else []
    wall += [(m, f"evaluation wall time, {m.split('.')[-1]} (s)") for m in metrics if m.startswith("eval.seconds.")]
    return [
        ("Accuracy and calibration", accuracy),
        ("OOD detection (in-distribution positive; every score and set)", ood),
        ("Robust accuracy (PGD; eps in [-1, 1] input units)", robust),
        ("Generation (digits-classifier features)", generation),
        ("Wall time", wall),
    ]


def wide_table(comparison: Comparison, rows: Sequence[tuple[str, str]], labels: Sequence[str]) -> list[str]:
    """One Markdown table: a row per metric, a column per group (recipe)."""
    groups = {g.label: g for g in comparison.groups}
    head = "| metric | " + " | ".join(labels) + " |"
    lines = [head, "| --- |" + " ---: |" * len(labels)]
    for metric, label in rows:
        cells = [cell(groups[g].stats.get(metric), len(groups[g].runs)) if g in groups else "" for g in labels]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def claims_table(
    tests: Sequence[Claim], values: dict[str, list[Numbers]], methods: Sequence[str], baseline: str
) -> tuple[list[str], list[tuple[Claim, str, Verdict]]]:
    """The claims table's Markdown lines, and each ``(claim, method, verdict)``."""
    lines = [
        "| claim | measure | method | method mean [95% CI] | baseline mean [95% CI] | difference [95% CI] "
        "| p (Welch) | n (method, baseline) | verdict |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    outcomes = []
    for claim in tests:
        base = [v for v in (claim.baseline_value(n) for n in values.get(baseline, [])) if v is not None]
        for method in methods:
            own = [v for v in (claim.method_value(n) for n in values.get(method, [])) if v is not None]
            verdict = decide(claim, own, base)
            outcomes.append((claim, method, verdict))
            diff = _number(verdict.difference)
            if verdict.ci_low is not None:
                diff += f" [{verdict.ci_low:.3g}, {verdict.ci_high:.3g}]"
            p = "" if verdict.p_value is None else f"{verdict.p_value:.3g}"
            mine = cell(describe(own)) if own else ""
            theirs = cell(describe(base)) if base else ""
            lines.append(
                f"| {claim.claim} | {claim.measure} | {method} | {mine} | {theirs} | {diff} | {p} "
                f"| {verdict.n_method}, {verdict.n_baseline} | **{verdict.verdict}** |"
            )
    return lines, outcomes


# ---------------------------------------------------------------------- the document
def collect(sweep_dirs: Sequence[Path]) -> tuple[list[RunInfo], list[RunInfo]]:
    """``(completed runs, other runs)`` of the sweeps."""
    done, other = [], []
    for sweep_dir in sweep_dirs:
        for path in find_runs(sweep_dir):
            info = read_run(path, sweep_dir.parent)
            (done if info.status == "completed" else other).append(info)
    return done, other


def _eval_commands(runs: Sequence[RunInfo]) -> list[str]:
    """The distinct ``jemkit eval`` option lists recorded in the runs' reports."""
    import json

    seen: dict[str, None] = {}
    for run in runs:
        path = eval_report_path(run.path)
        try:
            command = json.loads(path.read_text(encoding="utf-8")).get("command") if path else None
        except (OSError, ValueError):
            command = None
        if command:
            words = shlex.split(command)
            seen.setdefault(shlex.join(["jemkit", "eval", "RUN_DIR", *words[3:]]), None)
    return list(seen)


def build_document(
    sweep_dirs: Sequence[Path], keys: Sequence[str], command: str, tiny: bool, compare_file: Path
) -> str:
    """The Markdown of the results document from the evaluated sweeps; writes ``compare_file``."""
    import torch

    import jemkit

    done, other = collect(sweep_dirs)
    if not done:
        raise ResultsError(f"No completed run in {', '.join(map(str, sweep_dirs))}; nothing to compare.")
    comparison = compare(done)
    compare_file.parent.mkdir(parents=True, exist_ok=True)
    compare_file.write_text(markdown(comparison), encoding="utf-8")
    names = {key: _recipe_name(key) for key in keys}
    labels = [names[k] for k in keys]
    numbers_by = {names[k]: [run_numbers(r) for r in done if r.recipe == names[k]] for k in keys}
    counts = {label: len(numbers_by[label]) for label in labels}
    all_numbers = [n for values in numbers_by.values() for n in values]

    def eps_of(name: str) -> float | None:
        return next((n[name] for n in all_numbers if name in n), None)

    ood_sets = list(dict.fromkeys(m.split(".")[2] for m in comparison.metrics if m.startswith("eval.ood.")))
    norms = list(dict.fromkeys(m.split(".")[3] for m in comparison.metrics if m.startswith("eval.robustness.attacks.")))
    today = datetime.date.today().isoformat()
    out = [
        "# Results: the JEM paper's claims on the 8x8 digits, over seeds",
        "",
        f"Generated by `scripts/results.py` on {today}; do not edit by hand, run the script again. "
        + ("**A `--tiny` run: a few training steps and small evaluation settings, to test the pipeline; "
           "the numbers mean nothing.** " if tiny else "")
        + f"jemkit {jemkit.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU core(s).",
        "",
        "```bash",
        command,
        "```",
        "",
        "Runs per recipe: " + ", ".join(f"`{label}` n = {counts[label]}" for label in labels) + ".",
    ]
    if other:
        out.append(f"Left out (not completed): {', '.join(f'{r.name} ({r.status})' for r in other)}.")
    out += ["", "Each run: `jemkit run RECIPE --seeds ...` (one sweep per recipe), then:", "", "```bash"]
    out += _eval_commands(done) + ["```", ""]
    out += [
        "Every cell is mean ± sample sd (n-1) [95% confidence interval of the mean, Student t with n-1 "
        "degrees of freedom] over the seeds (`jemkit compare`); `(n=k)` marks a number fewer runs have. "
        f"The full table of every number is in [{compare_file.name}]({compare_file.name}) "
        f"(`jemkit compare {' '.join(_shown(d) for d in sweep_dirs)} --md {_shown(compare_file)}`).",
        "",
        "## Claims",
        "",
        "Each claim of the JEM paper (Grathwohl et al. 2020) for each JEM-family recipe against "
        f"`{names.get(BASELINE, BASELINE)}`, one value per seed and run. Rule: Welch's unequal-variance "
        f"t-test, two-sided, alpha = {ALPHA}. For a \"better\" claim: p < {ALPHA} with the difference in the "
        f"claimed direction **holds**, p < {ALPHA} the other way **does not hold**, otherwise **not "
        f"significant**. For \"accuracy close to the baseline\" (non-inferiority, margin {ACCURACY_MARGIN}): "
        f"the Welch 95% interval of the difference entirely above -{ACCURACY_MARGIN} **holds**, entirely "
        f"below **does not hold**, otherwise **not significant**. Fewer than two seeds on a side is "
        "**not significant**; a number no run has is **not measured**. OOD scores are compared with the "
        "baseline's same score; robustness is the mean PGD accuracy over the non-zero epsilons; with "
        "refinement, the defended accuracy counts an input only when both the adaptive and the transfer "
        "attack fail, against the baseline's undefended accuracy. Difference = method - baseline.",
        "",
    ]
    if BASELINE in keys:
        methods = [names[k] for k in keys if k != BASELINE]
        lines, _ = claims_table(claims(ood_sets, norms), numbers_by, methods, names[BASELINE])
        out += lines
    else:
        out.append("(No claims table: the baseline recipe was not among `--recipes`.)")
    for title, rows in sections(comparison.metrics, eps_of):
        if rows:
            out += ["", f"## {title}", ""] + wide_table(comparison, rows, labels)
    return "\n".join(out) + "\n"


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _recipe_name(key: str) -> str:
    from jemkit.config import load_recipe

    return str(load_recipe(recipe_path(key)).name)


# ---------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"seeds of every sweep (default {DEFAULT_SEEDS})")
    parser.add_argument(
        "--recipes", default=",".join(RECIPES), help=f"comma-separated subset of {', '.join(RECIPES)} (default all)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs trained and evaluated at a time (default 1)")
    parser.add_argument("--tiny", action="store_true", help="a few training steps, small eval settings (for tests)")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS, help=f"where the sweeps live (default {DEFAULT_RUNS.relative_to(ROOT)})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown to write (default docs/results.md)")
    parser.add_argument(
        "--eval-args", help="options of every `jemkit eval`, one string (default: "
        f"{' '.join(FULL_EVAL)}; with --tiny: small settings)",
    )
    parser.add_argument("--skip-train", action="store_true", help="only evaluate and write the document")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_script(lambda: build(args, argv))


def build(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """Train and evaluate what is missing, then write the document and its compare table."""
    if args.jobs < 1:
        raise ResultsError(f"--jobs must be at least 1, got {args.jobs}.")
    keys = [k.strip() for k in args.recipes.split(",") if k.strip()]
    for key in keys:
        recipe_path(key)
    eval_args = shlex.split(args.eval_args) if args.eval_args is not None else list(TINY_EVAL if args.tiny else FULL_EVAL)
    overrides = TINY_TRAIN if args.tiny else ()
    runs_dir = args.runs_dir.resolve()
    sweep_dirs = []
    for key in keys:
        sweep_dirs.append(runs_dir / key if args.skip_train else sweep(key, args.seeds, runs_dir, args.jobs, overrides))
    done, _ = collect(sweep_dirs)
    evaluate_runs([r.path for r in done], eval_args, args.jobs)
    command = script_command("scripts/results.py", argv)
    compare_file = args.out.with_name(f"{args.out.stem}_compare.md")
    write_document(args.out, build_document(sweep_dirs, keys, command, args.tiny, compare_file))
    print(f"wrote {args.out} and {compare_file}")


# ---------------------------------------------------------------------- shared by the result scripts
def script_command(script: str, argv: Sequence[str] | None) -> str:
    """The command line that regenerates a document: ``python SCRIPT ARGS`` (``argv`` or this process's)."""
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def run_script(body: Callable[[], None]) -> int:
    """Exit status of a result script's ``body``: 0, or 1 after printing a jemkit error's message."""
    try:
        body()
    except JemkitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def write_document(out: Path, text: str) -> None:
    """Write ``text`` to ``out``, making its folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
