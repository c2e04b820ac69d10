"""Sweeps: one recipe trained over a grid of overrides, each combination in its own run directory.

``jemkit run RECIPE -m optimizer.lr=1e-3,1e-4 sampler.steps=5,10`` (Hydra's syntax: with ``-m``,
an override whose value has commas outside brackets and quotes is a grid axis) and ``--seeds
1,2,3`` (the same as ``-m seed=1,2,3``; both combine) train every combination of the cartesian
product. The sweep directory (``--out``, default ``runs/<recipe-name>-sweep-<timestamp>``) holds::

    sweep.json                 recipe, base overrides, grid, each member's directory and status
    recipe/<recipe file>       a verbatim copy of the recipe that every member is started from,
                               so later edits of the original do not change a resumed sweep
    logs/<member>.log          each member's output (appended to on every attempt)
    <member>/                  a run directory per combination, e.g. ``seed=1,optimizer.lr=0.001``
    .unfinished/               member directories without a checkpoint, moved aside on restart

Every member is its own process (``python -m jemkit run ...``), ``--jobs N`` at a time, so a crash
of one leaves the others running; failed members are reported with their log after the others
finish and make the exit code non-zero. ``jemkit run --resume SWEEP_DIR`` finishes what is
missing: members with ``summary.json`` are skipped, members with a checkpoint are resumed, the
others started afresh. A sweep ends with ``jemkit compare``'s table over its members.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from jemkit.errors import Interrupted, JemkitError, RecipeError

#: The sweep's record, in the sweep directory.
SWEEP_FILE = "sweep.json"
#: ``format`` value of :data:`SWEEP_FILE`.
SWEEP_FORMAT = "jemkit-sweep/1"
#: Exit code of a sweep with at least one failed member.
EXIT_MEMBER_FAILED = 1
#: Longest member directory name; longer names are cut and end in a hash of the whole.
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")


class SweepError(JemkitError):
    """A sweep is asked for wrongly, or its directory cannot be used."""


# ---------------------------------------------------------------------- command-line options
def add_sweep_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--seeds``, ``-m/--multirun`` and ``--jobs`` to the ``jemkit run`` parser."""
    parser.add_argument(
        "--seeds", metavar="S1,S2,...",
        help="run once per seed, each in its own directory under one sweep directory "
        "(the same as -m seed=S1,S2,...; combines with other swept keys)",
    )
    parser.add_argument(
        "-m", "--multirun", action="store_true",
        help="sweep: every override key=a,b,... is a grid axis (Hydra's syntax); every combination "
        "runs in its own directory under --out (default runs/<recipe-name>-sweep-<timestamp>)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="sweep members trained at a time, each its own process (default 1); with N > 1 each "
        "gets OMP_NUM_THREADS = cores / N unless you set it",
    )


def sweep_requested(args: argparse.Namespace) -> bool:
    """Whether ``jemkit run``'s arguments ask for a sweep (``--seeds``, ``-m``, ``--resume SWEEP_DIR``)."""
    resume, jobs = getattr(args, "resume", None), getattr(args, "jobs", 1)
    wanted = bool(getattr(args, "seeds", None)) or bool(getattr(args, "multirun", False))
    wanted = wanted or (resume is not None and is_sweep_dir(resume))
    if not wanted and jobs != 1:
        raise SweepError(
            f"--jobs {jobs} runs sweep members in parallel, but this command is a single run. "
            "Sweep with --seeds 1,2,3 or -m key=a,b, or drop --jobs."
        )
    return wanted


def is_sweep_dir(path: Path | str) -> bool:
    """Whether ``path`` is a sweep directory (holds ``sweep.json``)."""
    return (Path(path) / SWEEP_FILE).is_file()


# ---------------------------------------------------------------------- the grid
def split_values(text: str) -> list[str]:
    """Split ``text`` at commas outside brackets, braces, parentheses and quotes.

    ``"1e-3,1e-4"`` gives two values, ``"[8,16],[16,32]"`` gives ``["[8,16]", "[16,32]"]`` and
    ``"[8,16]"`` one. Raises :class:`SweepError` on an empty value or unbalanced brackets.
    """
    values, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    if depth != 0 or quote:
        raise SweepError(f"Unbalanced brackets or quotes in {text!r}; write lists as [a,b] and close every quote.")
    if any(v == "" for v in values):
        raise SweepError(f"{text!r} has an empty value between commas; list the values as a,b,c.")
    return values


def parse_grid(overrides: Sequence[str], seeds: str | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """``(base overrides, grid)`` from ``-m`` overrides and ``--seeds``.

    A ``key=a,b`` override becomes the grid axis ``key: [a, b]``; the others apply to every member.
    ``--seeds`` is the axis ``seed`` and comes first. Raises :class:`SweepError` when nothing is
    swept, a key is swept twice, or a swept key is also set plainly.
    """
    base: list[str] = []
    grid: dict[str, list[str]] = {}
    if seeds is not None:
        values = split_values(seeds)
        bad = [v for v in values if not re.fullmatch(r"-?\d+", v)]
        if bad:
            raise SweepError(f"--seeds takes whole numbers such as 1,2,3; {', '.join(map(repr, bad))} is not one.")
        grid["seed"] = values
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(
                f"Override {item!r} is not of the form key=value. Write dotted keys such as "
                "train.epochs=5, or key=a,b to sweep over several values."
            )
        values = split_values(value) if value.strip() else [value]
        if len(values) == 1:
            base.append(item)
            continue
        if key in grid:
            how = "--seeds and -m seed=..." if key == "seed" else f"{key!r} twice"
            raise SweepError(f"The sweep sets {how}; give each swept key once.")
        grid[key] = values
    for key, values in grid.items():
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise SweepError(f"Swept key {key!r} lists {', '.join(repeated)} more than once; list each value once.")
    clash = [item for item in base if item.partition("=")[0] in grid]
    if clash:
        raise SweepError(
            f"{', '.join(clash)} sets a key the sweep varies ({', '.join(grid)}). "
            "Put the value into the swept list instead."
        )
    if not grid:
        raise SweepError(
            "A sweep (-m) needs at least one key with several values, e.g. -m optimizer.lr=1e-3,1e-4, "
            "or --seeds 1,2,3. Without one, drop -m to train a single run."
        )
    return base, grid


def member_name(params: dict[str, str]) -> str:
    """A readable, filesystem-safe directory name: ``seed=1,optimizer.lr=0.001``.

    Characters other than letters, digits and ``._,=+-`` become ``_``; a name longer than
    :data:`MAX_NAME` is cut and ends in 8 hex digits of a hash of the full text.
    """
    text = ",".join(f"{key}={value}" for key, value in params.items())
    name = _UNSAFE.sub("_", text).lstrip(".-") or "member"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}-{digest}"
    return name


# ---------------------------------------------------------------------- the record
@dataclass
class Member:
    """One combination of the grid and its last known state."""

    name: str
    #: Swept key -> value text, in grid order.
    params: dict[str, str]
    #: ``pending``, ``running``, ``completed`` (or the summary's status), ``failed``, ``interrupted``.
    status: str = "pending"
    exit_code: int | None = None
    started: str | None = None
    finished: str | None = None

    @property
    def overrides(self) -> list[str]:
        """The member's own ``key=value`` overrides (applied after the sweep's base overrides)."""
        return [f"{key}={value}" for key, value in self.params.items()]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dir": self.name,
            "log": f"logs/{self.name}.log",
            "overrides": self.overrides,
            "params": self.params,
            "status": self.status,
            "exit_code": self.exit_code,
            "started": self.started,
            "finished": self.finished,
        }


@dataclass
class Sweep:
    """A sweep directory and its record (:data:`SWEEP_FILE`)."""

    path: Path
    #: The recipe path as the user gave it.
    recipe: str
    #: The verbatim copy inside the sweep directory that members are started from (relative).
    recipe_copy: str
    base_overrides: list[str]
    grid: dict[str, list[str]]
    members: list[Member] = field(default_factory=list)
    created: str = ""

    def member_dir(self, member: Member) -> Path:
        return self.path / member.name

    def log_path(self, member: Member) -> Path:
        return self.path / "logs" / f"{member.name}.log"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SWEEP_FORMAT,
            "created": self.created,
            "recipe": self.recipe,
            "recipe_copy": self.recipe_copy,
            "base_overrides": self.base_overrides,
            "grid": self.grid,
            "members": [m.to_json() for m in self.members],
        }

    def save(self) -> None:
        """Write :data:`SWEEP_FILE` atomically (temporary file, then rename)."""
        target = self.path / SWEEP_FILE
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, target)


def plan_members(grid: dict[str, list[str]]) -> list[Member]:
    """One :class:`Member` per combination of ``grid`` (last key varies fastest); names made unique."""
    members: list[Member] = []
    taken: set[str] = set()
    for combination in product(*grid.values()):
        params = dict(zip(grid, combination))
        name = base = member_name(params)
        suffix = 1
        while name in taken:
            suffix += 1
            name = f"{base}-{suffix}"
        taken.add(name)
        members.append(Member(name, params))
    return members


def create_sweep(
    recipe: Path | str, base_overrides: Sequence[str], grid: dict[str, list[str]], sweep_dir: Path
) -> Sweep:
    """Check every member's recipe resolves, then create the sweep directory and its record.

    Raises :class:`SweepError` when ``sweep_dir`` already holds files, and the
    :class:`RecipeError` of a member whose overrides do not apply (before anything is started).
    """
    from jemkit.config import load_recipe

    members = plan_members(grid)
    for member in members:
        try:
            load_recipe(recipe, [*base_overrides, *member.overrides])
        except RecipeError as exc:
            raise RecipeError(f"Sweep member {member.name}: {exc}") from None
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise SweepError(f"--out {str(sweep_dir)!r} is a file, not a directory. Choose another sweep directory.")
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
        hint = (
            f"Finish it with `jemkit run --resume {sweep_dir}`"
            if is_sweep_dir(sweep_dir) else "Pass another --out"
        )
        raise SweepError(
            f"Sweep directory {str(sweep_dir)!r} already holds files; jemkit does not overwrite it. {hint}."
        )
    (sweep_dir / "recipe").mkdir(parents=True, exist_ok=True)
    (sweep_dir / "logs").mkdir(exist_ok=True)
    copy = Path("recipe") / Path(recipe).name  # same file name: the recipe's default name is its stem
    shutil.copyfile(recipe, sweep_dir / copy)
    sweep = Sweep(sweep_dir, str(recipe), str(copy), list(base_overrides), dict(grid), members, _now())
    sweep.save()
    return sweep


def load_sweep(sweep_dir: Path | str) -> Sweep:
    """Read a sweep directory's :data:`SWEEP_FILE`; a clear error when it is damaged."""
    sweep_dir = Path(sweep_dir)
    record_path = sweep_dir / SWEEP_FILE
    try:
        data = json.loads(record_path.read_text(encoding="utf-8"))
        if data.get("format") != SWEEP_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {SWEEP_FORMAT!r}")
        members = [
            Member(
                m["name"], dict(m["params"]), m.get("status", "pending"), m.get("exit_code"),
                m.get("started"), m.get("finished"),
            )
            for m in data["members"]
        ]
        sweep = Sweep(
            sweep_dir, data["recipe"], data["recipe_copy"], list(data["base_overrides"]),
            {k: list(v) for k, v in data["grid"].items()}, members, data.get("created", ""),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SweepError(
            f"{str(record_path)!r} is not a readable sweep record ({exc}). Restore it, or start the sweep "
            "again into a new --out directory."
        ) from None
    if not (sweep_dir / sweep.recipe_copy).is_file():
        raise SweepError(
            f"The sweep's copy of its recipe, {str(sweep_dir / sweep.recipe_copy)!r}, is missing, so members "
            f"that never started cannot be started. Copy {sweep.recipe!r} there and resume again."
        )
    return sweep


# ---------------------------------------------------------------------- running
def member_action(sweep: Sweep, member: Member) -> str:
    """``skip`` (has ``summary.json``), ``resume`` (has a checkpoint) or ``start``."""
    run_dir = sweep.member_dir(member)
    if (run_dir / "summary.json").is_file():
        return "skip"
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(
        p.suffix == ".safetensors" and not p.name.startswith("suspect_") for p in checkpoints.iterdir()
    ):
        return "resume"
    return "start"


def member_command(sweep: Sweep, member: Member, action: str, nproc: int = 1) -> list[str]:
    """The ``python -m jemkit run ...`` command line that trains (or resumes) ``member``."""
    root = sweep.path.resolve()
    command = [sys.executable, "-m", "jemkit", "run"]
    if action == "resume":
        command += ["--resume", str(root / member.name)]
    else:
        command += [str(root / sweep.recipe_copy), "--out", str(root / member.name)]
        command += [*sweep.base_overrides, *member.overrides]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    return command


def member_env(jobs: int) -> dict[str, str]:
    """The members' environment: jemkit's process defaults and, with ``jobs > 1``, a fair share of
    the cores as ``OMP_NUM_THREADS`` (a value already set wins)."""
    from jemkit.entry import apply_env_defaults

    env = dict(os.environ)
    apply_env_defaults(env)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        env["OMP_NUM_THREADS"] = str(max(1, cores // jobs))
    return env


def _set_aside(run_dir: Path) -> Path | None:
    """Move a member directory without checkpoint out of the way (into ``.unfinished/``) so the
    member can start afresh; returns where it went."""
    if not run_dir.exists():
        return None
    holder = run_dir.parent / ".unfinished"
    holder.mkdir(exist_ok=True)
    target = holder / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = holder / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    os.replace(run_dir, target)
    return target


@dataclass
class _Running:
    member: Member
    process: subprocess.Popen[bytes]
    log: IO[str]
    t0: float


class _Stop(Exception):
    """SIGTERM reached the sweep: stop the members like SIGINT does."""


def run_sweep(sweep: Sweep, console: Console, errors: Console, jobs: int = 1, nproc: int = 1) -> int:
    """Train every unfinished member, ``jobs`` at a time; print the members and the comparison.

    Returns 0 when every member completed, :data:`EXIT_MEMBER_FAILED` otherwise (after all of them
    ran). SIGINT/SIGTERM stop the running members (each writes a checkpoint) and raise
    :class:`Interrupted` with the command that continues the sweep.
    """
    if jobs < 1:
        raise SweepError(f"--jobs must be at least 1, got {jobs}.")
    total = len(sweep.members)
    planned = [(index, member, member_action(sweep, member)) for index, member in enumerate(sweep.members, 1)]
    queue = deque(item for item in planned if item[2] != "skip")
    console.print(
        f"sweep {sweep.path}: {total} member(s), {len(queue)} to train, {jobs} at a time; "
        f"logs in {sweep.path / 'logs'}",
        highlight=False, markup=False, soft_wrap=True,
    )
    for index, member, action in planned:
        if action == "skip":
            member.status = _summary_status(sweep.member_dir(member)) or "completed"
            console.print(
                f"[{index}/{total}] {member.name}: done already (summary.json)",
                highlight=False, markup=False, soft_wrap=True,
            )
    sweep.save()
    env = member_env(jobs)
    running: list[_Running] = []
    previous = _install_sigterm()
    try:
        while queue or running:
            while queue and len(running) < jobs:
                index, member, action = queue.popleft()
                running.append(_start(sweep, member, action, nproc, env, console, f"[{index}/{total}]"))
            for item in list(running):
                code = item.process.poll()
                if code is not None:
                    running.remove(item)
                    _finish(sweep, item, code, console)
            time.sleep(0.1)
    except (KeyboardInterrupt, _Stop):
        _stop_all(sweep, running, errors)
        raise Interrupted(
            f"Sweep stopped; running members wrote a checkpoint. Continue with `jemkit run --resume {sweep.path}`."
        ) from None
    finally:
        _restore_sigterm(previous)
    return report(sweep, console, errors)


def _start(
    sweep: Sweep, member: Member, action: str, nproc: int, env: dict[str, str], console: Console, tag: str
) -> _Running:
    run_dir = sweep.member_dir(member)
    moved = _set_aside(run_dir) if action == "start" else None
    command = member_command(sweep, member, action, nproc)
    log_path = sweep.log_path(member)
    log_path.parent.mkdir(exist_ok=True)
    log = open(log_path, "a", encoding="utf-8")
    log.write(f"=== {_now()} {action}: {shlex.join(command)}\n")
    if moved is not None:
        log.write(f"=== the unfinished directory without checkpoint was moved to {moved}\n")
    log.flush()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    member.status, member.exit_code, member.started, member.finished = "running", None, _now(), None
    sweep.save()
    verb = "resumed" if action == "resume" else "started"
    console.print(
        f"{tag} {member.name}: {verb} (log {_relative(log_path)})", highlight=False, markup=False, soft_wrap=True
    )
    return _Running(member, process, log, time.perf_counter())


def _finish(sweep: Sweep, item: _Running, code: int, console: Console) -> None:
    item.log.close()
    member = item.member
    member.exit_code, member.finished = code, _now()
    status = _summary_status(sweep.member_dir(member))  # e.g. "diverged" from a trainer that records it
    if status is not None:
        member.status = status
    else:
        member.status = "interrupted" if code == 130 else "failed"
    sweep.save()
    seconds = time.perf_counter() - item.t0
    console.print(
        f"    {member.name}: {member.status} after {seconds:.1f} s (exit {code})",
        highlight=False, markup=False, soft_wrap=True,
    )


def _stop_all(sweep: Sweep, running: list[_Running], errors: Console) -> None:
    """Ask every running member to checkpoint and stop (SIGINT); kill them on a second interrupt."""
    errors.print(f"[yellow]stopping {len(running)} running member(s)...[/yellow]")
    for item in running:
        if item.process.poll() is None:
            item.process.send_signal(signal.SIGINT)
    try:
        for item in running:
            item.process.wait()
    except (KeyboardInterrupt, _Stop):
        for item in running:
            if item.process.poll() is None:
                item.process.kill()
                item.process.wait()
    for item in running:
        item.log.close()
        item.member.status, item.member.exit_code, item.member.finished = "interrupted", item.process.returncode, _now()
    sweep.save()


def _install_sigterm() -> Any:
    def handler(signum: int, frame: Any) -> None:
        raise _Stop()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _restore_sigterm(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- the end
def report(sweep: Sweep, console: Console, errors: Console) -> int:
    """Print the members table, the comparison of the completed ones and every failure with its log.

    Returns 0 when every member completed, :data:`EXIT_MEMBER_FAILED` otherwise.
    """
    from jemkit.compare import compare, rich_table
    from jemkit.run_index import read_run

    table = Table(title=f"sweep {sweep.path}")
    table.add_column("member", overflow="fold")
    for column in ("status", "steps", "test/acc"):
        table.add_column(column, justify="left" if column == "status" else "right", no_wrap=True)
    done = []
    for member in sweep.members:
        run_dir = sweep.member_dir(member)
        info = read_run(run_dir, sweep.path) if (run_dir / "config.yaml").is_file() else None
        acc = "" if info is None or info.test_acc is None else f"{info.test_acc:.4f}"
        steps = "" if info is None or info.steps is None else str(info.steps)
        table.add_row(*(Text(c) for c in (member.name, member.status, steps, acc)))
        if info is not None and info.status == "completed":
            done.append(info)
    console.print(table)
    keys = [key for key in sweep.grid if key != "seed"]
    if done:
        console.print(rich_table(compare(done, keys)))
        group = f" --group-by {','.join(keys)}" if keys else ""
        console.print(f"again: jemkit compare {sweep.path}{group}", highlight=False, markup=False, soft_wrap=True)
    failed = [m for m in sweep.members if m.status != "completed"]
    for member in failed:
        where = f"log: {_relative(sweep.log_path(member))}{_last_line(sweep.log_path(member))}"
        errors.print(
            f"[bold red]member {escape(member.name)} {member.status}[/bold red] "
            f"(exit {member.exit_code}); {escape(where)}",
            highlight=False, soft_wrap=True,
        )
    if failed:
        errors.print(
            f"{len(failed)} of {len(sweep.members)} member(s) did not complete. Fix the cause and finish "
            f"the sweep with `jemkit run --resume {sweep.path}`.",
            highlight=False, markup=False, soft_wrap=True,
        )
        return EXIT_MEMBER_FAILED
    return 0


def _summary_status(run_dir: Path) -> str | None:
    try:
        data = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("status", "completed")) if isinstance(data, dict) else None


def _last_line(log: Path) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
    except OSError:
        return ""
    return f"; last line: {lines[-1]}" if lines else ""


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------- `jemkit run` entry
def sweep_command(
    args: argparse.Namespace, console: Console, errors: Console, default_dir: Callable[[str], Path]
) -> int:
    """``jemkit run`` with ``--seeds``/``-m``, or ``--resume SWEEP_DIR``: create or finish a sweep.

    ``default_dir(name)`` gives the sweep directory when ``--out`` is absent (``name`` is
    ``<recipe-name>-sweep``). With ``--print-config`` it prints every member's resolved recipe.
    """
    if args.jobs < 1:
        raise SweepError(f"--jobs must be at least 1, got {args.jobs}.")
    if args.resume is not None and is_sweep_dir(args.resume):
        extra = [*([args.recipe] if args.recipe else []), *args.overrides]
        if args.seeds or args.multirun or extra or args.out is not None:
            raise SweepError(
                f"{str(args.resume)!r} is a sweep: it resumes with the recipe, overrides and grid in its "
                f"{SWEEP_FILE}. Drop --seeds, -m, --out and key=value overrides, or start a new sweep."
            )
        sweep = load_sweep(args.resume)
        if args.print_config:
            return _print_configs(sweep.path / sweep.recipe_copy, sweep.base_overrides, sweep.members)
        return run_sweep(sweep, console, errors, jobs=args.jobs, nproc=args.nproc)
    if args.resume is not None:
        raise SweepError(
            f"--resume {str(args.resume)!r} continues one run; --seeds and -m start a sweep. Resume a sweep "
            f"with `jemkit run --resume SWEEP_DIR` (a directory holding {SWEEP_FILE})."
        )
    if args.recipe is None or ("=" in args.recipe and not Path(args.recipe).is_file()):
        raise SweepError(
            "A sweep needs a recipe file first: `jemkit run RECIPE --seeds 1,2,3` or `jemkit run RECIPE -m key=a,b`."
        )
    from jemkit.config import load_recipe

    base, grid = parse_grid(args.overrides, args.seeds)
    cfg = load_recipe(args.recipe, base)
    if args.print_config:
        return _print_configs(Path(args.recipe), base, plan_members(grid))
    sweep = create_sweep(args.recipe, base, grid, args.out or default_dir(f"{cfg.name}-sweep"))
    return run_sweep(sweep, console, errors, jobs=args.jobs, nproc=args.nproc)


def _print_configs(recipe: Path, base: Sequence[str], members: Sequence[Member]) -> int:
    from jemkit.config import load_recipe, to_yaml

    for member in members:
        cfg = load_recipe(recipe, [*base, *member.overrides])
        sys.stdout.write(f"# --- sweep member {member.name}\n{to_yaml(cfg)}")
    return 0
