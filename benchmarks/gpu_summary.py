"""Markdown summary of a ``benchmarks/gpu_check.sh`` run (also works on CPU results).

    python benchmarks/gpu_summary.py OUT_DIR [RUN_DIR ...]

OUT_DIR holds ``env.txt``, ``levers.json`` and optionally ``levers_compile.json`` (written by
``step_cost.py --levers --json``). Each RUN_DIR is a ``jemkit run`` directory; its throughput is
read from ``metrics.jsonl`` (``time/it_per_s``, the first window left out because it holds
start-up, CUDA-graph capture and cuDNN autotuning) and its ``summary.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import lever_rows, projected_hours  # noqa: E402

#: The projection the issue asks for: 150 epochs of the CIFAR-10 recipe's 45,000 training images.
EPOCHS, TRAIN_SIZE, TARGET_HOURS = 150, 45000, 4.0


def lever_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of ``step_cost.py --levers`` results (:func:`step_cost.lever_rows`), with the
    projected hours of a 150-epoch run marked where they meet the target."""
    rows = lever_rows(results, EPOCHS, TRAIN_SIZE)
    hours = f"h/{EPOCHS} ep"
    for row in rows:
        row[hours] += " ✓" if float(row[hours]) <= TARGET_HOURS else ""
    keys = list(rows[0])
    return [
        "| " + " | ".join(keys) + " |",
        "|---|" + "---:|" * (len(keys) - 1),
        *("| " + " | ".join(row[k] for k in keys) + " |" for row in rows),
    ]


def run_throughput(run_dir: Path) -> dict[str, Any]:
    """Steady-state iterations per second of a run (windows after the first) and its summary."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["time/it_per_s"] for r in records if "time/it_per_s" in r]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    steady = rates[1:] or rates
    return {
        "run": run_dir.name,
        "windows": len(rates),
        "it_per_s": statistics.median(steady) if steady else float("nan"),
        "first_window_it_per_s": rates[0] if rates else float("nan"),
        "steps": summary.get("steps"),
        "status": summary.get("status", "no summary.json (the run did not finish)"),
        "wall_seconds": summary.get("wall_seconds"),
        "batch_size": _batch_size(config),
    }


def _batch_size(config_yaml: str) -> int:
    in_train = False
    for line in config_yaml.splitlines():
        if not line.startswith(" "):
            in_train = line.startswith("train:")
        elif in_train and line.strip().startswith("batch_size:"):
            return int(line.split(":", 1)[1])
    return 64


def run_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"| run | status | steps | wall s | steady it/s | first window it/s | h / {EPOCHS} epochs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        rate = r["it_per_s"]
        hours = projected_hours(1000.0 / rate, EPOCHS, TRAIN_SIZE, r["batch_size"]) if rate > 0 else float("nan")
        lines.append(
            f"| {r['run']} | {r['status']} | {r['steps']} | {r['wall_seconds']} | {rate:.2f} "
            f"| {r['first_window_it_per_s']:.2f} | {hours:.2f} |"
        )
    return lines


def summarise(out_dir: Path, run_dirs: list[Path]) -> str:
    """The whole Markdown summary."""
    lines = ["# GPU check", ""]
    env = out_dir / "env.txt"
    if env.exists():
        lines += ["```", env.read_text().strip(), "```", ""]
    for name, title in (("levers.json", "Levers"), ("levers_compile.json", "torch.compile configurations")):
        path = out_dir / name
        if path.exists():
            results = json.loads(path.read_text())
            if results:
                lines += [f"## {title} (`step_cost.py`, medians)", "", *lever_table(results), ""]
        else:
            lines += [f"## {title}: not measured ({name} missing)", ""]
    runs = [run_throughput(d) for d in run_dirs if (d / "metrics.jsonl").exists()]
    missing = [str(d) for d in run_dirs if not (d / "metrics.jsonl").exists()]
    if runs:
        lines += ["## End-to-end `jemkit run` throughput", "", *run_table(runs), ""]
    if missing:
        lines += [f"Runs without metrics.jsonl: {', '.join(missing)}", ""]
    lines.append(f"Target: a full CIFAR-10 JEM ({EPOCHS} epochs) in at most {TARGET_HOURS:g} hours (✓ = meets it).")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(summarise(Path(argv[0]), [Path(a) for a in argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
