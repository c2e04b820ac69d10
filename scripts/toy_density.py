"""Density quality of the 2-D toy recipes over seeds -> docs/results_toys.md.

    .venv/bin/python scripts/toy_density.py --jobs 2                  # 5 toys + ablations x 5 seeds
    .venv/bin/python scripts/toy_density.py --tiny --toys moons --seeds 1,2 \\
        --runs-dir /tmp/t --out /tmp/t/toys.md                         # the pipeline in seconds

Each toy recipe (and each ablation arm below: the same recipe with a few keys changed) is trained
over the seeds as one sweep (``jemkit run RECIPE --seeds S``; a complete sweep is not trained again,
an incomplete one is resumed). The toy_plot plugin has written every run's density quality to its
``summary.json`` (plugins/evaluation/toy_density.py): ``density/mode_masses`` and
``density/true_modes`` (the model's normalised ``exp(-E)`` mass in each mode's region of the plotting
grid, and the true mass there), ``density/mode_mass_err`` (the largest of their differences),
``density/tv`` (total variation against the analytic density) and ``samples/mmd2`` (the model's
samples against fresh data). The document gives them per seed and per arm, and whether the aim is
met: on every seed, every mode holds its true share of the mass within ``AIM_RELATIVE`` of that
share (issue 17 asks 12.5 % +- 4 points for eight_gaussians, i.e. +- 32 % of the share, and
comparable aims for the other toys: the same relative tolerance, so a 50 % moon may be 16 points off
and a 16.7 % ring 5.3; the absolute gap in points is shown beside it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from results import ResultsError, cell, run_script, script_command, sweep, write_document  # noqa: E402

from jemkit.compare import describe  # noqa: E402
from jemkit.run_index import find_runs, read_run  # noqa: E402

#: How far each mode's share of the model's mass may be from its true share, as a fraction of
#: the true share: 4 points of eight_gaussians' 12.5 % (issue 17's aim), the same for every toy.
AIM_RELATIVE = 4.0 / 12.5
DEFAULT_SEEDS = "1,2,3,4,5"


@dataclass(frozen=True)
class Arm:
    """One sweep: a toy recipe with ``overrides``; ``why`` says what it tests."""

    key: str
    recipe: str
    overrides: tuple[str, ...] = ()
    why: str = "the recipe as shipped"


#: The overrides that turn a textbook toy recipe into toy_8gaussians_balanced's setting.
BALANCED: tuple[str, ...] = (
    "loss.pxy=1.0", "sampler.init.class_conditional=true", "loss.energy_l2=0.2", "schedule.name=warmup_multistep",
    "schedule.warmup_steps=0", "schedule.milestones=[30,36]", "schedule.gamma=0.3",
)
NO_DECAY = ("schedule.milestones=[]",)

ARMS: tuple[Arm, ...] = (
    Arm("8gaussians", "toy_8gaussians.yaml"),
    Arm("8gaussians_no_decay", "toy_8gaussians.yaml", NO_DECAY, "toy_8gaussians without its LR decay (as before issue 17)"),
    Arm("8gaussians_balanced", "toy_8gaussians_balanced.yaml"),
    Arm("8gaussians_balanced_no_decay", "toy_8gaussians_balanced.yaml", NO_DECAY,
        "toy_8gaussians_balanced without its LR decay (constant LR 1e-3 to the end)"),
    Arm("moons", "toy_moons.yaml"),
    Arm("moons_no_decay", "toy_moons.yaml", NO_DECAY, "toy_moons without its LR decay (as before issue 17)"),
    Arm("moons_balanced", "toy_moons.yaml", BALANCED, "toy_moons with toy_8gaussians_balanced's setting"),
    Arm("rings", "toy_rings.yaml"),
    Arm("rings_no_decay", "toy_rings.yaml", NO_DECAY, "toy_rings without its LR decay (as before issue 17)"),
    Arm("rings_balanced_prior", "toy_rings.yaml", (*BALANCED, "sampler.init.class_prior=data"),
        "toy_rings with toy_8gaussians_balanced's setting and p(x) negatives drawn from the class blocks in "
        "the data's proportion (the rings hold 1:2:3 of the points)"),
    Arm("checkerboard", "toy_checkerboard.yaml"),
    Arm("checkerboard_no_decay", "toy_checkerboard.yaml", NO_DECAY,
        "toy_checkerboard without its LR decay (as before issue 17)"),
    Arm("checkerboard_balanced", "toy_checkerboard.yaml", BALANCED,
        "toy_checkerboard with toy_8gaussians_balanced's setting (2 classes for 8 modes: the class blocks "
        "cannot balance the squares within a class)"),
)

#: Overrides of ``--tiny`` (a test of the pipeline: the numbers mean nothing).
TINY: tuple[str, ...] = ("train.epochs=1", "train.max_steps=3", "train.sample_extra_steps=0", "loggers=[]")


@dataclass
class ToyRun:
    """Density quality of one finished run (fractions in [0, 1]; mmd2 in squared data units)."""

    seed: str
    mode_masses: list[float]
    true_modes: list[float]
    worst: float
    tv: float
    mmd2: float
    wall_seconds: float | None

    @property
    def worst_relative(self) -> float:
        """The largest ``|model share / true share - 1|`` over the modes."""
        return max(abs(m / t - 1) for m, t in zip(self.mode_masses, self.true_modes, strict=True))

    @property
    def meets_aim(self) -> bool:
        return self.worst_relative <= AIM_RELATIVE + 1e-9


def read_toy_run(run_dir: Path) -> ToyRun:
    """The density entries of ``run_dir/summary.json``; a clear error when they are missing."""
    path = run_dir / "summary.json"
    try:
        summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return ToyRun(
            str(read_run(run_dir).config.get("seed", "?")),
            [float(v) for v in summary["density/mode_masses"]],
            [float(v) for v in summary["density/true_modes"]],
            float(summary["density/mode_mass_err"]),
            float(summary["density/tv"]),
            float(summary["samples/mmd2"]),
            summary.get("wall_seconds"),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ResultsError(
            f"{path} has no density quality ({error!r}): it is written by the toy_plot plugin at the end of a "
            "toy run. Check that the run finished and its recipe lists toy_plot (the toy recipes do)."
        ) from None


def _percent(values: Sequence[float]) -> str:
    return " / ".join(f"{100 * v:.1f}" for v in values)


def arm_rows(arm: Arm, runs: Sequence[ToyRun]) -> list[str]:
    """Per-seed rows of one arm."""
    return [
        f"| {arm.key} | {r.seed} | {100 * r.worst_relative:.0f} | {100 * r.worst:.1f} | {'yes' if r.meets_aim else 'no'} "
        f"| {_percent(r.mode_masses)} | {r.tv:.3f} | {r.mmd2:.4f} |"
        for r in runs
    ]


def summary_row(arm: Arm, runs: Sequence[ToyRun]) -> str:
    """One line per arm: worst mode over seeds, seeds meeting the aim, TV and MMD (mean ± sd [CI])."""
    relative, worst = max(r.worst_relative for r in runs), max(r.worst for r in runs)
    met = sum(r.meets_aim for r in runs)
    verdict = "**met**" if met == len(runs) else "not met"
    return (
        f"| {arm.key} | {len(runs)} | {100 * relative:.0f} | {100 * worst:.1f} | {met} of {len(runs)} | {verdict} "
        f"| {cell(describe([r.tv for r in runs]))} | {cell(describe([r.mmd2 for r in runs]))} |"
    )


def document(results: dict[Arm, list[ToyRun]], command: str, tiny: bool) -> str:
    from jemkit.precision import cpu_model

    lines = [
        "# Density quality of the 2-D toys over seeds",
        "",
        f"Generated by `scripts/toy_density.py` on {datetime.date.today().isoformat()} (CPU: {cpu_model()}); "
        "run it again rather than editing." + (" **A `--tiny` run: the numbers mean nothing.**" if tiny else ""),
        "",
        "```bash",
        command,
        "```",
        "",
        "Mode masses: the share of the model's normalised exp(-E) on the plotting grid that falls in each mode's "
        "region (cells nearest to that mode's data), against the true share (12.5 % for each of the eight "
        "Gaussians and each dark checkerboard square, 50 % per moon, 1:2:3 for the rings by their point counts). "
        f"Aim: on every seed, every mode within {100 * AIM_RELATIVE:.0f} % of its true share (issue 17's 12.5 % "
        "± 4 points for eight_gaussians, the same relative tolerance for the other toys). TV: total "
        "variation between the model's and the analytic density on the grid (0 identical, 1 disjoint). "
        "MMD²: unbiased squared MMD of the model's samples against fresh data (about 0.05 for uniform noise). "
        "Means ± sd [95% CI] over seeds.",
        "",
        "## Per recipe",
        "",
        "| recipe (arm) | n | worst mode off by (% of its share, max over seeds) | (points) | seeds within the aim "
        "| aim | density TV | samples MMD² |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    lines += [summary_row(arm, runs) for arm, runs in results.items()]
    lines += ["", "## Arms", ""]
    lines += [f"- `{arm.key}`: `recipes/{arm.recipe}`" + (f" with `{' '.join(arm.overrides)}`" if arm.overrides else "")
              + f": {arm.why}." for arm in results]
    lines += [
        "",
        "## Per seed",
        "",
        "| recipe (arm) | seed | worst mode off by (% of its share) | (points) | within the aim | mode masses (%) "
        "| density TV | samples MMD² |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for arm, runs in results.items():
        lines += arm_rows(arm, runs)
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    keys = ", ".join(arm.key for arm in ARMS)
    parser.add_argument("--toys", default=",".join(arm.key for arm in ARMS), help=f"comma-separated subset of {keys}")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"seeds (default {DEFAULT_SEEDS})")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time (default 1)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "toys", help="where the sweeps live")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results_toys.md", help="the Markdown written")
    parser.add_argument("--tiny", action="store_true", help="three training steps per run (tests the pipeline)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_script(lambda: build(args, script_command("scripts/toy_density.py", argv)))


def build(args: argparse.Namespace, command: str) -> None:
    """Train what is missing and write the document."""
    by_key = {arm.key: arm for arm in ARMS}
    wanted = [k.strip() for k in args.toys.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in by_key]
    if unknown:
        raise ResultsError(f"Unknown toy arm(s) {', '.join(unknown)}. Choose from {', '.join(by_key)}.")
    if args.jobs < 1:
        raise ResultsError(f"--jobs must be at least 1, got {args.jobs}.")
    runs_dir = args.runs_dir.resolve()
    results: dict[Arm, list[ToyRun]] = {}
    for key in wanted:
        arm = by_key[key]
        overrides = [*arm.overrides, *(TINY if args.tiny else ())]
        sweep_dir = sweep(arm.key, args.seeds, runs_dir, args.jobs, overrides, ROOT / "recipes" / arm.recipe)
        results[arm] = [read_toy_run(path) for path in find_runs(sweep_dir)]
    write_document(args.out, document(results, command, args.tiny))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
