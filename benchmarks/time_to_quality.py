"""Time to quality per digits method: one-thread training wall time until the test accuracy and
the class-conditional sample accuracy both reach their thresholds.

    .venv/bin/python benchmarks/time_to_quality.py                     # 6 methods x 5 seeds
    .venv/bin/python benchmarks/time_to_quality.py --tiny --recipes baseline,jem --seeds 1,2 \\
        --runs-dir /tmp/t --out /tmp/t/ttq.md                           # the pipeline in a minute

Each method's recipe is trained over the seeds (``jemkit run RECIPE --seeds S``, ``--jobs`` at a
time) with ``OMP_NUM_THREADS=1`` (one thread per run), a test evaluation and a checkpoint after
every epoch (``train.eval_every_epochs=1 train.checkpoint_every_epochs=1``, all checkpoints
kept). Then, checkpoint by checkpoint in training order, a run has *reached quality* at the first
checkpoint whose test accuracy (``test/acc`` in ``metrics.jsonl`` at that step) is at least
``--acc`` and whose class-conditional sample accuracy is at least ``--sample-acc``: the fraction
of ``--per-class`` samples per class, drawn by fresh chains from U(-1, 1) and ``--steps`` steps of
the run's own transition on ``E(x, y)`` (what ``jemkit eval`` calls fresh class-conditional
samples), that the fixed ``digits_classifier`` labels as their class. Its time is the
checkpoint's recorded training wall time (seconds, one thread; it includes the per-epoch test
evaluation and checkpoint writing). The sample accuracy is only measured at checkpoints that
pass the accuracy threshold, in class-balanced chunks that stop as soon as the misses make the
threshold unreachable (an exact "not yet", at a quarter of the cost for methods whose samples
are far off), and cached in ``RUN_DIR/time_to_quality.json``, so a second call only measures
what is new. The table gives per method the median over seeds (a run that never
reached quality counts as infinitely slow, so the median is "not reached" when half or more of
the seeds never got there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jemkit.errors import JemkitError
from jemkit.run_index import find_runs, read_jsonl, read_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
# The digits recipes (short name -> file) and the --tiny overrides are those of the results script.
from results import RECIPES, TINY_TRAIN, run_script, script_command, sweep, write_document  # noqa: E402

#: Overrides that give every epoch its test accuracy and its checkpoint (all kept: see
#: :func:`per_epoch`, which adds ``train.keep_checkpoints``).
PER_EPOCH: tuple[str, ...] = ("train.eval_every_epochs=1", "train.checkpoint_every_epochs=1")
CACHE = "time_to_quality.json"
#: Samples per chunk (one batch of chains) of the sample-accuracy measurement.
SAMPLE_CHUNK = 256


class TimeToQualityError(JemkitError):
    """Training or measuring for the time-to-quality table failed, or its options are wrong."""


@dataclass
class RunResult:
    """When one run reached quality (``None`` fields: it never did)."""

    run_dir: Path
    recipe: str
    seed: str
    wall_seconds: float | None
    step: int | None
    epoch: int | None
    #: Test and sample accuracy at that checkpoint (or the best seen when never reached).
    test_acc: float | None
    sample_acc: float | None
    #: Training wall time of the whole run (s) and its epochs, to read "not reached" against.
    total_seconds: float | None
    epochs: int | None


# ---------------------------------------------------------------------- training
def train(key: str, seeds: str, runs_dir: Path, jobs: int, tiny: bool) -> Path:
    """Train (or finish) the one-thread sweep of ``key`` over ``seeds``; its directory."""
    if key not in RECIPES:
        raise TimeToQualityError(f"Unknown recipe {key!r}. Choose from {', '.join(RECIPES)} (comma-separated).")
    recipe = ROOT / "recipes" / RECIPES[key]
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return sweep(key, seeds, runs_dir, jobs, per_epoch(recipe, TINY_TRAIN if tiny else ()), recipe, one_thread)


# ---------------------------------------------------------------------- measuring
def per_epoch(recipe: Path, overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus :data:`PER_EPOCH` and ``train.keep_checkpoints`` = epochs + 1 (every
    epoch's checkpoint and the one at step 0 stay; jemkit checks that the disk holds them)."""
    from jemkit.config import load_recipe

    epochs = int(load_recipe(recipe, list(overrides)).train.epochs)
    return [*overrides, *PER_EPOCH, f"train.keep_checkpoints={epochs + 1}"]


@dataclass
class SampleVerdict:
    """Sample accuracy of one checkpoint: ``correct`` of the ``drawn`` samples, out of ``total``."""

    correct: int
    drawn: int
    total: int

    @property
    def accuracy(self) -> float:
        """Fraction correct among the samples drawn (all of them when :attr:`complete`)."""
        return self.correct / self.drawn

    @property
    def complete(self) -> bool:
        return self.drawn == self.total

    @property
    def bound(self) -> float:
        """The highest full accuracy still possible: every sample not drawn counted correct."""
        return (self.correct + self.total - self.drawn) / self.total

    def reaches(self, threshold: float) -> bool | None:
        """Whether the full accuracy reaches ``threshold``; ``None`` when only drawing more can tell."""
        if self.complete:
            return self.accuracy >= threshold
        return False if self.bound < threshold else None


class SampleJudge:
    """Class-conditional sample accuracy of a run's checkpoint, as ``jemkit eval`` draws samples.

    The samples come in chunks of ``batch_size`` whose labels cycle through the classes (every
    chunk is class-balanced) and whose chains are seeded by ``seed`` and the chunk's index, so a
    chunk's samples do not depend on whether other chunks were drawn. Given a ``threshold``, drawing
    stops as soon as the misses make it unreachable (:meth:`SampleVerdict.bound` below it): an exact
    "no", and the accuracy of the chunks drawn by then as an estimate.
    """

    def __init__(self, per_class: int, steps: int, seed: int = 0, batch_size: int = SAMPLE_CHUNK) -> None:
        from jemkit.plugin_manager import load_plugins

        self.plugins = load_plugins()
        self.per_class, self.steps, self.seed, self.batch_size = per_class, steps, seed, batch_size

    @property
    def settings(self) -> dict[str, Any]:
        """What a cached verdict depends on (a cache with other settings is measured again)."""
        return {"per_class": self.per_class, "steps": self.steps, "seed": self.seed, "chunk": self.batch_size}

    def __call__(self, run_dir: Path, checkpoint: Path, threshold: float | None = None) -> SampleVerdict:
        """The digits classifier's verdict on the samples of ``checkpoint`` (all of them without ``threshold``)."""
        import torch

        from jemkit.evaluation.components import build_extractor, fresh_chain_init
        from jemkit.evaluation.features import extract
        from jemkit.evaluation.generation import fresh_samples
        from jemkit.evaluation.rundir import load_run
        from jemkit.evaluation.settings import resolve_settings
        from jemkit.performance import autocast

        device = torch.device("cpu")
        run, _ = load_run(self.plugins, run_dir, run_dir.name, str(checkpoint), device)
        settings = resolve_settings("digits", {"device": "cpu"})
        extractor, _ = build_extractor(self.plugins, settings, run.context)
        classes = int(run.context.num_classes or 1)
        y = torch.arange(classes).repeat(self.per_class)  # class-cycled: every chunk is balanced
        init = fresh_chain_init(self.plugins, run.context)
        verdict = SampleVerdict(0, 0, len(y))
        for index, start in enumerate(range(0, len(y), self.batch_size)):
            labels = y[start : start + self.batch_size]
            torch.manual_seed(self.seed * 100_003 + index)
            with autocast(device, run.performance):
                x = fresh_samples(
                    run.model, init, run.sampler.transition, self.steps, run.sampler.model_mode, len(labels), labels,
                    self.batch_size, device,
                )
            _, logits = extract(extractor, x, self.batch_size, device)
            verdict.correct += int((logits.argmax(1) == labels).sum())
            verdict.drawn += len(labels)
            if threshold is not None and verdict.reaches(threshold) is False:
                break
        return verdict


def checkpoint_wall(path: Path) -> float:
    """Training wall seconds recorded in a checkpoint (``progress.wall_seconds``)."""
    from jemkit.checkpoint import load_checkpoint

    return float(load_checkpoint(path).state["progress"]["wall_seconds"])


def measure_run(run_dir: Path, acc: float, sample_acc: float, judge: SampleJudge) -> RunResult:
    """Scan the run's step checkpoints in order for the first that reaches both thresholds."""
    from jemkit.checkpoint import checkpoint_dir, checkpoint_step, list_checkpoints

    info = read_run(run_dir)
    accuracy = {int(r["step"]): float(r["test/acc"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "test/acc" in r}
    epochs_at = {int(r["step"]): int(r["epoch"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "test/acc" in r and "epoch" in r}
    cache_path = run_dir / CACHE
    cache: dict[str, Any] = {}
    if cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text(encoding="utf-8"))
        except ValueError:
            cache = {}
    if cache.get("settings") != judge.settings:
        cache = {"settings": judge.settings, "verdicts": {}}
    seed = str(info.config.get("seed", "?"))
    best_test, best_sample = None, None
    for path in list_checkpoints(checkpoint_dir(run_dir)):
        step = checkpoint_step(path)
        if step is None or step not in accuracy:
            continue
        test_acc = accuracy[step]
        best_test = test_acc if best_test is None else max(best_test, test_acc)
        if test_acc < acc:
            continue
        known = cache["verdicts"].get(str(step))
        verdict = SampleVerdict(**known) if isinstance(known, dict) else None
        if verdict is None or verdict.reaches(sample_acc) is None:  # unknown, or stopped early at a lower threshold
            verdict = judge(run_dir, path, sample_acc)
            cache["verdicts"][str(step)] = asdict(verdict)
            cache_path.write_text(json.dumps(cache, indent=2) + "\n", encoding="utf-8")
        best_sample = verdict.accuracy if best_sample is None else max(best_sample, verdict.accuracy)
        if verdict.reaches(sample_acc):
            return RunResult(
                run_dir, info.recipe, seed, checkpoint_wall(path), step, epochs_at.get(step), test_acc,
                verdict.accuracy, info.wall_seconds, _int(info.summary, "epochs"),
            )
    return RunResult(
        run_dir, info.recipe, seed, None, None, None, best_test, best_sample, info.wall_seconds, _int(info.summary, "epochs")
    )


def _int(summary: dict[str, Any] | None, key: str) -> int | None:
    value = (summary or {}).get(key)
    return int(value) if isinstance(value, (int, float)) else None


# ---------------------------------------------------------------------- the table
def median_time(results: Sequence[RunResult]) -> float:
    """Median wall seconds over the runs; a run that never reached quality counts as ``inf``."""
    return float(statistics.median([math.inf if r.wall_seconds is None else r.wall_seconds for r in results]))


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def _show(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _seconds(value: float) -> str:
    """Seconds to 0.1 s, or to 3 significant digits below 1 s (a tiny run's 0.04 s stays non-zero)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def table(results: dict[str, list[RunResult]], acc: float, sample_acc: float) -> list[str]:
    """The Markdown table: one row per method, fastest median first, "not reached" last."""
    lines = [
        "| method | recipe | n | reached | median wall s to quality (one thread) | range over seeds (s) "
        "| median epoch | median run length (s, epochs) | test acc at quality, else best (median) "
        "| sample acc at quality, else best (median) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = sorted(results, key=lambda key: (median_time(results[key]), key))
    for key in order:
        runs = results[key]
        reached = [r for r in runs if r.wall_seconds is not None]
        median = median_time(runs)
        span = f"{_seconds(min(r.wall_seconds for r in reached))} to {_seconds(max(r.wall_seconds for r in reached))}" if reached else ""
        shown = "not reached" if math.isinf(median) else _seconds(median)
        length = _median([r.total_seconds for r in runs])
        epochs = _median([r.epochs for r in runs])
        lines.append(
            f"| {key} | {runs[0].recipe if runs else ''} | {len(runs)} | {len(reached)} | {shown} | {span} "
            f"| {_show(_median([r.epoch for r in reached]))} "
            f"| {'' if length is None else f'{length:.1f}'}, {'' if epochs is None else int(epochs)} "
            f"| {_show(_median([r.test_acc for r in runs]))} | {_show(_median([r.sample_acc for r in runs]))} |"
        )
    return lines


def document(results: dict[str, list[RunResult]], args: argparse.Namespace, command: str) -> str:
    """The Markdown written to ``--out``."""
    import torch

    import jemkit
    from jemkit.precision import cpu_model

    lines = [
        "# Time to quality per digits method",
        "",
        f"Generated by `benchmarks/time_to_quality.py` on {datetime.date.today().isoformat()}; jemkit "
        f"{jemkit.__version__}, torch {torch.__version__}, one thread per run (`OMP_NUM_THREADS=1`), "
        f"{args.jobs} run(s) at a time on {os.cpu_count()} core(s)."
        + (" **A `--tiny` run: the numbers mean nothing.**" if args.tiny else ""),
        "",
        "```bash",
        command,
        "```",
        "",
        f"Quality: test accuracy >= {args.acc} and class-conditional sample accuracy >= {args.sample_acc} "
        f"({args.per_class} fresh samples per class, U(-1, 1) + {args.steps} steps of the run's transition, "
        "labelled by the fixed digits classifier), checked after every epoch. Time: the training wall "
        "time recorded in the first checkpoint that has both, median over the n seeds (a seed that never "
        "got there counts as infinitely slow). Best accuracies: the highest seen per run (test: every "
        "epoch; samples: only where the test threshold was met; a checkpoint's sample accuracy is measured "
        f"in class-balanced chunks of {SAMPLE_CHUNK} that stop once the misses make the threshold "
        "unreachable, so a best sample accuracy under the threshold may come from the first chunks only).",
        "",
        f"CPU: {cpu_model()}.",
        "",
    ]
    return "\n".join(lines + table(results, args.acc, args.sample_acc)) + "\n"


# ---------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated subset of {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="seeds (default 1,2,3,4,5)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, one thread each (default 1)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "time_to_quality", help="where the sweeps live")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    parser.add_argument("--acc", type=float, default=0.97, help="test accuracy threshold (default 0.97)")
    parser.add_argument("--sample-acc", type=float, default=0.95, help="sample accuracy threshold (default 0.95)")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class (default 100, as jemkit eval)")
    parser.add_argument("--steps", type=int, default=100, help="transition steps of the fresh chains (default 100)")
    parser.add_argument("--tiny", action="store_true", help="a few training steps and 5 samples per class (for tests)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.per_class, args.steps = min(args.per_class, 5), min(args.steps, 5)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_script(lambda: build(args, argv))


def build(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """Train what is missing, measure every run, then write (or print) the table."""
    if args.jobs < 1:
        raise TimeToQualityError(f"--jobs must be at least 1, got {args.jobs}.")
    keys = [k.strip() for k in args.recipes.split(",") if k.strip()]
    runs_dir = args.runs_dir.resolve()
    sweeps = {key: train(key, args.seeds, runs_dir, args.jobs, args.tiny) for key in keys}
    judge = SampleJudge(args.per_class, args.steps)
    results = {}
    for key, sweep_dir in sweeps.items():
        results[key] = [measure_run(run, args.acc, args.sample_acc, judge) for run in find_runs(sweep_dir)]
    text = document(results, args, script_command("benchmarks/time_to_quality.py", argv))
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_document(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
