"""Clean vs SGLD-refined test accuracy over seeds, for a range of refinement step sizes.

Reproduces the "Refinement" table of docs/results_refinement.md from the sweeps of
``scripts/results.py`` (it trains nothing)::

    .venv/bin/python scripts/results.py --recipes baseline,jem            # the sweeps, if not there
    .venv/bin/python scripts/refine_sweep.py --recipes baseline,jem --jobs 2

For every member run of ``RUNS/<recipe>`` and every setting, one ``jemkit eval RUN --only acc
--bootstrap 0`` with ``--refine-step-size STEP --refine-noise NOISE`` (or ``--refine-step-size
run``: the run's own sampler transition) writes its report to ``RUN/refine_sweep/<setting>/``; a
setting already there is read, not evaluated again. The table gives, per recipe and setting, the
refined accuracy and the change from clean (refined - clean, accuracy units) as mean ± sample sd
[95% Student-t CI of the mean] over the seeds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from results import DEFAULT_RUNS, RECIPES, ResultsError, cell  # noqa: E402

from jemkit.compare import describe  # noqa: E402

#: Default settings: the run's own transition, then SGLD step sizes with the digits noise.
DEFAULT_STEPS = "run,1.0,0.3,0.1,0.05,0.03,0.01"
DEFAULT_NOISE = 0.01
DEFAULT_OUT = ROOT / "docs" / "results_refinement.md"


def setting_label(step: str, noise: float) -> str:
    """Folder name and table label of one setting: ``run`` or ``step<S>_noise<N>``."""
    return "run" if step == "run" else f"step{float(step):g}_noise{noise:g}"


def eval_command(run: Path, step: str, noise: float, refine_steps: int, out: Path) -> list[str]:
    """The ``jemkit eval`` that measures clean and refined accuracy of ``run`` at one setting."""
    command = [sys.executable, "-m", "jemkit", "eval", str(run), "--only", "acc", "--bootstrap", "0"]
    command += ["--refine-steps", str(refine_steps), "--out", str(out), "--refine-step-size", step]
    if step != "run":
        command += ["--refine-noise", str(noise)]
    return command


def members(sweep_dir: Path) -> list[Path]:
    """The completed member runs of one sweep directory."""
    from jemkit.sweep import is_sweep_dir, load_sweep

    if not is_sweep_dir(sweep_dir):
        raise ResultsError(f"{sweep_dir} is not a sweep directory. Run scripts/results.py first (it makes the sweeps).")
    runs = [sweep_dir / m.name for m in load_sweep(sweep_dir).members]
    done = [run for run in runs if (run / "summary.json").is_file()]
    if not done:
        raise ResultsError(f"{sweep_dir} has no completed run. Finish it with `jemkit run --resume {sweep_dir}`.")
    return done


def accuracy(report_dir: Path) -> tuple[float, float]:
    """(clean, refined) accuracy of a finished ``--only acc`` report."""
    report = json.loads((report_dir / "report.json").read_text())
    entry = next(iter(report["runs"].values()))["accuracy"]
    return float(entry["clean"]), float(entry["refined"])


def measure(runs: Sequence[Path], steps: Sequence[str], noise: float, refine_steps: int, jobs: int) -> None:
    """Evaluate every (run, setting) without a report yet, ``jobs`` at a time."""
    todo = []
    for run in runs:
        for step in steps:
            out = run / "refine_sweep" / setting_label(step, noise)
            if not (out / "report.json").is_file():
                todo.append(eval_command(run, step, noise, refine_steps, out))

    def one(command: list[str]) -> tuple[list[str], int, str]:
        print(f"[refine] {shlex.join(command)}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return command, done.returncode, done.stderr

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        failed = [(c, code, err) for c, code, err in pool.map(one, todo) if code != 0]
    if failed:
        command, code, err = failed[0]
        raise ResultsError(
            f"{len(failed)} evaluation(s) failed; the first, `{shlex.join(command)}`, exited {code}: "
            f"{err.strip()[-600:]} Fix the cause and run this script again: finished settings are kept."
        )


def table(sweeps: dict[str, list[Path]], steps: Sequence[str], noise: float) -> list[str]:
    """Markdown rows: recipe, setting, n, clean, refined, refined - clean."""
    lines = [
        "| recipe | refinement | n | clean accuracy | refined accuracy | refined - clean |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, runs in sweeps.items():
        for step in steps:
            pairs = [accuracy(run / "refine_sweep" / setting_label(step, noise)) for run in runs]
            clean, refined = [c for c, _ in pairs], [r for _, r in pairs]
            change = [r - c for c, r in pairs]
            how = "the run's own transition" if step == "run" else f"SGLD step {float(step):g}, noise {noise:g}"
            lines.append(
                f"| {RECIPES[key].removesuffix('.yaml')} | {how} | {len(pairs)} | {cell(describe(clean))} | "
                f"{cell(describe(refined))} | {cell(describe(change))} |"
            )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="baseline,jem", help=f"comma-separated subset of {', '.join(RECIPES)}")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS, help="where scripts/results.py put the sweeps")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help=f"step sizes, `run` = the run's transition (default {DEFAULT_STEPS})")
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE, help=f"SGLD noise std, [-1, 1] units (default {DEFAULT_NOISE})")
    parser.add_argument("--refine-steps", type=int, default=10, help="refinement transitions (default 10)")
    parser.add_argument("--jobs", type=int, default=1, help="evaluations at a time (default 1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown to write")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        keys = [k.strip() for k in args.recipes.split(",") if k.strip()]
        unknown = [k for k in keys if k not in RECIPES]
        if unknown:
            raise ResultsError(f"Unknown recipe {unknown[0]!r}. Choose from {', '.join(RECIPES)} (comma-separated).")
        steps = [s.strip() for s in args.steps.split(",") if s.strip()]
        for step in steps:
            if step != "run":
                try:
                    if float(step) < 0:
                        raise ValueError
                except ValueError:
                    raise ResultsError(f"--steps: {step!r} is neither `run` nor a non-negative number.") from None
        sweeps = {key: members(args.runs_dir / key) for key in keys}
        measure([run for runs in sweeps.values() for run in runs], steps, args.noise, args.refine_steps, args.jobs)
    except ResultsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    shown = shlex.join([Path(sys.argv[0]).as_posix() if argv is None else "scripts/refine_sweep.py", *(argv or sys.argv[1:])])
    text = [
        "# SGLD refinement: clean vs refined accuracy over seeds",
        "",
        f"Generated by `scripts/refine_sweep.py` on {datetime.date.today().isoformat()}; run it again rather than "
        "editing. Each cell: mean ± sample sd [95% CI of the mean, Student t] over the seeds; accuracy on the "
        f"digits test split (360 inputs); {args.refine_steps} refinement transitions on E(x).",
        "",
        "```bash",
        f"python {shown}",
        "```",
        "",
        *table(sweeps, steps, args.noise),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
