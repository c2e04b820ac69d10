#!/usr/bin/env python
"""What one JEM training iteration costs, next to its parts and a plain classifier iteration.

Usage::

    python benchmarks/step_cost.py RECIPE [key=value ...] [--repeats 7] [--warmup 2] [--iters 3]
                                   [--device cpu|cuda] [--threads N] [--json OUT.json]
                                   [--levers [--rounds N] [--only TEXT] [--with-compile]]

The experiment is built exactly as ``jemkit run`` builds it (``load_plugins`` + ``load_recipe`` +
``Trainer`` -> ``build_experiment``), its ``performance.autocast`` / ``channels_last`` are settled as
a run settles them (``auto`` is timed on the first training examples, :mod:`jemkit.precision`), and
every timing runs on the first batch of a training DataLoader with the recipe's batch size, in the
memory format and under the autocast of the settled precision (the breakdown adds up under any
precision). Timed, each as the median over ``--repeats`` runs of ``--iters`` iterations after
``--warmup`` warm-up iterations (CUDA is synchronised around each run; the runs of the different
measurements are interleaved so that changing machine load hits them alike):

``jem_iteration``
    ``Trainer.train_step`` itself: the recipe's loss (sampling included), backward, optimiser and
    schedule step.
``sampler_step``
    One transition ``sampler.transition.step(x, model.energy)`` on the chains of one sampler call,
    under the sampler's ``model_mode`` and ``frozen_weights``, as :class:`jemkit.sampler.Sampler`
    runs it (a timed run makes K transitions per iteration, as a sampler call does, and reports
    the time per transition).
``sampler_call``
    One whole ``sampler.sample(model, n, persist=False)``: K transitions plus chain initialisation
    and diagnostics.
``update``
    The loss's forward and backward on the data plus negatives recorded from the real sampler
    (the loss is called with a stand-in sampler that hands back those negatives): the JEM
    iteration without sampling and without the optimiser step.
``optimizer_step``
    ``optimizer.step()`` alone (a recipe-built optimiser on a copy of the network).
``plain_iteration``
    ``Trainer.train_step`` with the loss swapped for ``cross_entropy`` on a copy of the network with
    its own optimiser and schedule built from the recipe, so the JEM state is left alone.
``reference_iteration``
    A plain PyTorch JEM iteration written the way the reference JEM code writes it
    (``benchmarks/plain_jem.py``: separate batches for p(x) and p(y|x), three forward passes,
    fp32, NCHW, weights not frozen while sampling) on an fp32 NCHW copy of the same network, with
    the recipe's K, SGLD step and noise, buffer size, loss weights and optimiser.

Derived: ``floor = sampler_calls * K * sampler_step + update`` (what an iteration costs if sampling
were nothing but its K transitions and the update were free of overhead) and the ratios
``jem / plain``, ``jem / floor`` and ``reference / jem`` (how many times faster jemkit's iteration
is than the reference-style loop, both measured in this run). ``measure()`` returns all of it as a
dict, with the CPU model, torch's CPU capability, the CPU's bf16 flags and the precision record.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader

from jemkit.build import build_component
from jemkit.config import load_recipe
from jemkit.contracts import Batch, parameters_requiring_grad
from jemkit.errors import JemkitError
from jemkit.performance import autocast, prepare_input
from jemkit.plugin_manager import load_plugins
from jemkit.precision import cpu_model as cpu_name, hardware, settle_for_run
from jemkit.sampler import frozen_weights, model_mode
from jemkit.train import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # plain_jem.py beside this script
from plain_jem import PlainJEM  # noqa: E402

#: Timings in the order they are measured and printed.
TIMINGS = (
    "jem_iteration", "sampler_step", "sampler_call", "update", "optimizer_step", "plain_iteration",
    "reference_iteration",
)


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Phase:
    """One thing to time: ``fn`` is one iteration; ``context`` is entered around each timed run."""

    fn: Callable[[], Any]
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    #: Already warmed up elsewhere: no warm-up iterations here.
    warm: bool = False
    #: Calls of ``fn`` per iteration (each timed run makes ``iters * calls_per_iter`` calls; the
    #: time is reported per call).
    calls_per_iter: int = 1


def time_phases(
    phases: dict[str, Phase], *, repeats: int, warmup: int, iters: int, sync: Callable[[], None]
) -> dict[str, dict[str, Any]]:
    """Milliseconds per call of each phase: median, min and max over ``repeats`` runs of ``iters`` iterations.

    After ``warmup`` untimed iterations of every phase, the runs are interleaved (run r of every
    phase, then run r + 1 of every phase, ...) so that a change in the machine's load during the
    benchmark reaches all phases alike instead of skewing whichever happened to run then.
    """
    for phase in phases.values():
        if phase.warm:
            continue
        with phase.context():
            for _ in range(warmup):
                phase.fn()
    sync()
    runs: dict[str, list[float]] = {name: [] for name in phases}
    for _ in range(repeats):
        for name, phase in phases.items():
            calls = iters * max(1, phase.calls_per_iter)
            with phase.context():
                sync()
                start = time.perf_counter()
                for _ in range(calls):
                    phase.fn()
                sync()
                runs[name].append((time.perf_counter() - start) * 1000.0 / calls)
    return {
        name: {"median_ms": statistics.median(r), "min_ms": min(r), "max_ms": max(r), "runs_ms": r}
        for name, r in runs.items()
    }


def host_peak_rss_mib() -> float:
    """The process's peak resident set size so far (``getrusage`` maxrss), MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """Peak memory so far: CUDA ``max_memory_allocated``, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return host_peak_rss_mib(), "process maxrss"


def _load_average() -> float | None:
    """The 1-minute load average (other work competing for the CPUs), where the system has one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# --------------------------------------------------------------------------- helpers


class _RecordedNegatives:
    """Stand-in sampler for the loss: hands back, in order, the negatives the real sampler drew."""

    def __init__(self, steps: int, negatives: list[Tensor]) -> None:
        self.steps = steps
        self.negatives = negatives
        self.last_diagnostics: dict[str, float] = {}
        self._next = 0

    def sample(self, model: Any, n: int, y: Tensor | None = None, **kwargs: Any) -> Tensor:
        x = self.negatives[self._next % len(self.negatives)]
        self._next += 1
        return x


def _first_batches(trainer: Trainer) -> tuple[Batch, Batch]:
    """The first two shuffled batches of an epoch-0 training DataLoader (as the Trainer seeds it),
    NCHW; the second is the first again when the training set holds only one batch."""
    e = trainer.experiment
    generator = torch.Generator()
    generator.manual_seed(e.context.seed * 100003)
    loader = DataLoader(e.data.train, batch_size=e.train.batch_size, shuffle=True, drop_last=True, generator=generator)
    batches = []
    for x, y, *_ in loader:
        batches.append(Batch(x=x.to(trainer.device), y=y.to(trainer.device)))
        if len(batches) == 2:
            break
    if not batches:
        raise JemkitError(
            f"The training set has {len(e.data.train)} examples, fewer than one batch of "
            f"{e.train.batch_size}; lower train.batch_size."
        )
    return batches[0], batches[-1]


def _reference_loop(trainer: Trainer, plugins: Any, cfg: Any, source: str) -> PlainJEM:
    """The reference-style loop (:mod:`plain_jem`) on an fp32 NCHW copy of the run's network, with
    the recipe's K, SGLD step and noise, buffer size, reinitialisation rate, loss weights and
    optimiser (its own instance)."""
    e = trainer.experiment
    model = copy.deepcopy(e.model).to(memory_format=torch.contiguous_format)
    optimizer = build_component(
        plugins, "optimizer", cfg, "optimizer", e.context, list(model.parameters()), source=source
    )
    transition = OmegaConf.select(cfg, "sampler.transition", default=None) or {}
    init = OmegaConf.select(cfg, "sampler.init", default=None) or {}
    return PlainJEM(
        model, optimizer, tuple(e.context.input_shape),
        steps=int(e.sampler.steps),
        step_size=float(transition.get("step_size", 1.0)),
        noise=float(transition.get("noise", 0.01)),
        buffer_size=int(init.get("size", 10000)),
        reinit_freq=float(init.get("reinit_freq", 0.05)),
        px_weight=float(OmegaConf.select(cfg, "loss.px", default=1.0)),
        pyx_weight=float(OmegaConf.select(cfg, "loss.pyx", default=1.0)),
    )


def _record_sampler_calls(trainer: Trainer, batch: Batch) -> list[tuple[int, Tensor | None, Tensor]]:
    """Run one real ``train_step`` and record every ``sampler.sample`` call the loss makes."""
    sampler = trainer.experiment.sampler
    real = sampler.sample
    calls: list[tuple[int, Tensor | None, Tensor]] = []

    def recording(model: Any, n: int, y: Tensor | None = None, **kwargs: Any) -> Tensor:
        x = real(model, n, y, **kwargs)
        calls.append((n, y, x))
        return x

    sampler.sample = recording  # instance attribute shadows the method for this one step
    try:
        trainer.train_step(batch)
    finally:
        del sampler.sample
    return calls


# --------------------------------------------------------------------------- measurement


def measure(
    recipe: str | Path,
    overrides: Sequence[str] = (),
    *,
    repeats: int = 7,
    warmup: int = 2,
    iters: int = 3,
    device: str | None = None,
    threads: int | None = None,
    reference: bool = True,
) -> dict[str, Any]:
    """Build ``recipe`` (with ``overrides``) and time a JEM iteration, its parts and a plain iteration.

    ``device`` (``cpu``, ``cuda``, ``cuda:N``) overrides the recipe's ``device``; ``threads`` sets
    ``torch.set_num_threads`` for the measurement (the previous setting is restored afterwards);
    ``reference=False`` leaves out the reference-style loop. Returns a JSON-serialisable dict (see
    the module docstring).
    """
    if min(repeats, iters) < 1 or warmup < 0:
        raise ValueError("repeats and iters must be at least 1 and warmup non-negative")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(
            recipe, list(overrides), repeats=repeats, warmup=warmup, iters=iters, device=device, reference=reference
        )
    finally:
        torch.set_num_threads(previous_threads)


def _measure(
    recipe: str | Path, overrides: list[str], *, repeats: int, warmup: int, iters: int, device: str | None,
    reference: bool,
) -> dict[str, Any]:
    overrides = [*overrides, *([f"device={device}"] if device else [])]
    plugins = load_plugins()
    cfg = load_recipe(recipe, overrides)

    rss_before_build = host_peak_rss_mib()  # the interpreter, torch and the plugins
    with tempfile.TemporaryDirectory(prefix="jemkit-step-cost-") as tmp:
        build_start = time.perf_counter()
        trainer = Trainer(plugins, cfg, Path(tmp) / "run", source=str(recipe))  # nothing is written there
        build_seconds = time.perf_counter() - build_start
        e = trainer.experiment
        model, sampler, dev = e.model, e.sampler, trainer.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        first, second = _first_batches(trainer)
        load_before = _load_average()
        # the reference-style loop copies the network before the precision is applied (fp32 NCHW)
        plain_jem = _reference_loop(trainer, plugins, cfg, str(recipe)) if reference else None
        # the precision a run of this recipe would use (auto: timed now, as at the start of a run)
        precision = settle_for_run(e, Path(tmp) / "run", trainer.dist)
        perf = e.performance
        batch = Batch(x=prepare_input(first.x, perf), y=first.y)  # as Trainer._batches prepares it

        # One real iteration first: it records the sampler calls the loss makes (count, n, y and
        # the negatives), then the JEM warm-up iterations; the peak memory after them is the JEM one.
        calls = _record_sampler_calls(trainer, batch)
        for _ in range(warmup):
            trainer.train_step(batch)
        sync()
        peak_jem, memory_kind = peak_memory_mib(dev)

        # (a) the JEM iteration: Trainer.train_step as the training loop calls it.
        def jem_iteration() -> None:
            trainer.train_step(batch)

        # (b) one sampler transition, inside the sampler's model mode and frozen weights.
        n, y = (calls[0][0], calls[0][1]) if calls else (batch.x.shape[0], None)
        chain = {"x": sampler.init.start(n, y, dev).x}

        def energy_fn(inputs: Tensor) -> Tensor:
            return model.energy(inputs, y)

        def sampler_step() -> None:
            result = sampler.transition.step(chain["x"], energy_fn)
            chain["x"] = result.x.detach()
            result.energy.mean()  # the sampler's per-step diagnostics (no device sync)

        @contextlib.contextmanager
        def sampling() -> Iterator[None]:
            model.train()  # the mode training is in when the loss calls the sampler
            bind = getattr(sampler.transition, "bind", None)
            if callable(bind):  # transitions that need the model bind it per sampler call
                bind(model, y)
            with model_mode(model, sampler.model_mode), frozen_weights(model, sampler.freeze_weights):
                with autocast(dev, perf):  # as train_step runs the loss, which calls the sampler
                    yield

        # the whole sampler call: K transitions plus chain initialisation and diagnostics.
        def sampler_call() -> None:
            with autocast(dev, perf):
                sampler.sample(model, n, y=y, persist=False)
            sampler.clear_diagnostics()

        # (d) the update: the loss's forward + backward on data plus the recorded negatives, no step.
        stand_in = _RecordedNegatives(sampler.steps, [x for _, _, x in calls] or [batch.x])

        def update() -> None:
            model.train()
            with autocast(dev, perf):  # the forward under autocast, the backward after it, as train_step
                loss = e.loss(model, batch, stand_in).loss
            float(loss.detach())  # train_step checks the loss value here (a device sync)
            e.optimizer.zero_grad(set_to_none=True)
            loss.backward()

        # (c) a plain classifier iteration of the same network and batch: Trainer.train_step with
        # cross-entropy, on a copy of the network with its own optimiser and schedule built from
        # the recipe, so the JEM model and optimiser state are left alone.
        clone = copy.deepcopy(model)
        optimizer = build_component(
            plugins, "optimizer", cfg, "optimizer", e.context, parameters_requiring_grad(clone), source=str(recipe)
        )
        schedule_cfg = cfg if cfg.get("schedule") is not None else OmegaConf.create({"schedule": {"name": "constant"}})
        schedule = build_component(plugins, "schedule", schedule_cfg, "schedule", e.context, optimizer, source=str(recipe))
        plain_loss = build_component(
            plugins, "loss", OmegaConf.create({"loss": {"name": "cross_entropy"}}), "loss", e.context
        )
        plain = copy.copy(trainer)
        plain.experiment = dataclasses.replace(e, model=clone, loss=plain_loss, optimizer=optimizer, schedule=schedule)

        def plain_iteration() -> None:
            plain.train_step(batch)

        # the optimiser step alone, on the copy (with the gradients of its latest plain iteration).
        plain_iteration()  # so that the copy has gradients before the first optimiser step

        def optimizer_step() -> None:
            optimizer.step()

        # (e) the reference-style plain loop: its own batches (p(x): the first, p(y|x): the second),
        # fp32, NCHW, on its own copy of the network.
        def reference_iteration() -> None:
            assert plain_jem is not None
            plain_jem.iteration(first.x, second.x, second.y)

        phases = {
            "jem_iteration": Phase(jem_iteration, warm=True),
            # K transitions per iteration, as in a sampler call: each timed run of the short step
            # lasts as long as ``iters`` sampler calls, which evens out the machine's noise.
            "sampler_step": Phase(sampler_step, sampling, calls_per_iter=sampler.steps),
            "sampler_call": Phase(sampler_call),
            "update": Phase(update),
            "plain_iteration": Phase(plain_iteration),
            "optimizer_step": Phase(optimizer_step),
        }
        if plain_jem is not None:
            phases["reference_iteration"] = Phase(reference_iteration)
        times = time_phases(phases, repeats=repeats, warmup=warmup, iters=iters, sync=sync)
        e.optimizer.zero_grad(set_to_none=True)
        peak_all, _ = peak_memory_mib(dev)
        load_after = _load_average()

    ms = {name: times[name]["median_ms"] for name in TIMINGS if name in times}
    steps = int(sampler.steps)
    floor = len(calls) * steps * ms["sampler_step"] + ms["update"]
    machine = hardware(dev)
    return {
        "recipe": str(recipe),
        "overrides": list(overrides),
        "name": str(cfg.get("name")),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "cpu_model": cpu_name(),
        "cpu_capability": machine["cpu_capability"],
        "cpu_bf16_flags": machine["cpu_bf16_flags"],
        "bf16_supported": machine["bf16_supported"],
        "precision": precision.to_record(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "batch_size": int(batch.x.shape[0]),
        "input_shape": list(batch.x.shape[1:]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "K": steps,
        "sampler_calls": len(calls),
        "chains_per_call": int(n),
        "repeats": repeats,
        "warmup": warmup,
        "iters": iters,
        "build_seconds": build_seconds,
        "load_average": [load_before, load_after],
        **{f"{name}_ms": value for name, value in ms.items()},
        "floor_ms": floor,
        "ratio_jem_plain": ms["jem_iteration"] / ms["plain_iteration"],
        "ratio_jem_floor": ms["jem_iteration"] / floor,
        **({"ratio_reference_jem": ms["reference_iteration"] / ms["jem_iteration"]} if reference else {}),
        "peak_memory_jem_mib": peak_jem,
        "peak_memory_mib": peak_all,
        "peak_memory_kind": memory_kind,
        "host_rss_before_build_mib": rss_before_build,
        "timings": times,
    }


# --------------------------------------------------------------------------- report


def format_report(r: dict[str, Any]) -> str:
    """The numbers of :func:`measure` as a small text table."""
    spread = {name: (r["timings"][name]["min_ms"], r["timings"][name]["max_ms"]) for name in r["timings"]}

    def row(label: str, value: str, note: str = "") -> str:
        return f"  {label:<34} {value:>12}  {note}".rstrip()

    def timed(label: str, name: str) -> str:
        lo, hi = spread[name]
        return row(label, f"{r[name + '_ms']:.2f}", f"(min {lo:.2f}, max {hi:.2f})")

    calls = r["sampler_calls"]
    floor_note = f"= {calls} x K x sampler step + update" if calls != 1 else "= K x sampler step + update"
    precision = r["precision"]
    requested = precision.get("requested", {})
    lines = [
        f"{r['name']}  ({r['recipe']} {' '.join(r['overrides'])})".rstrip(),
        f"  device {r['device']} ({r['device_name']}), torch {r['torch']}, {r['threads']} threads, "
        f"batch {r['batch_size']} x {r['input_shape']}, {r['parameters']:,} parameters",
        f"  CPU {r['cpu_model']}, torch CPU capability {r['cpu_capability']}, bf16 CPU flags: "
        f"{', '.join(r['cpu_bf16_flags']) or 'none'}, bf16 autocast candidate: {r['bf16_supported']}",
        f"  precision {precision['choice']} ({precision['source']}; recipe autocast={requested.get('autocast')}, "
        f"channels_last={requested.get('channels_last')}); every part below is timed under it",
        f"  median of {r['repeats']} runs x {r['iters']} iterations after {r['warmup']} warm-up (ms per iteration)",
        timed("JEM iteration (ms)", "jem_iteration"),
        timed("sampler step (ms)", "sampler_step"),
        row("K (sampler.steps)", str(r["K"]), f"{calls} sampler call(s) per iteration"),
        timed("sampler call, K steps (ms)", "sampler_call"),
        timed("update: fwd+bwd data+neg (ms)", "update"),
        timed("optimizer step (ms)", "optimizer_step"),
        timed("plain classifier iteration (ms)", "plain_iteration"),
        row("ratio JEM / plain", f"{r['ratio_jem_plain']:.2f}"),
        row("floor (ms)", f"{r['floor_ms']:.2f}", floor_note),
        row("ratio JEM / floor", f"{r['ratio_jem_floor']:.3f}"),

        row("peak memory, JEM (MiB)", f"{r['peak_memory_jem_mib']:.0f}", f"({r['peak_memory_kind']})"),
        row("peak memory, whole run (MiB)", f"{r['peak_memory_mib']:.0f}"),
        row("host maxrss before build (MiB)", f"{r['host_rss_before_build_mib']:.0f}", "(interpreter + torch)"),
    ]
    if "reference_iteration_ms" in r:
        lines[-3:-3] = [
            timed("reference-style plain JEM (ms)", "reference_iteration"),
            row("reference-style / JEM", f"{r['ratio_reference_jem']:.2f}x",
                "(2 batches, 3 forward passes, fp32, NCHW, weights not frozen)"),
        ]
    return "\n".join(lines)


#: Lever configurations for ``--levers``: (label, overrides). The first is the reference.
#: Every configuration starts from the recipe with its ``performance:`` levers off, so that each
#: lever is measured on against off even where a recipe turns it on (CIFAR: channels_last).
LEVERS_OFF: tuple[str, ...] = (
    "performance.channels_last=false", "performance.autocast=none", "performance.compile=false",
    "performance.cuda_graphs=false",
)
LEVERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reference: performance levers off, weights frozen while sampling", ()),
    ("weights NOT frozen while sampling", ("sampler.freeze_weights=false",)),
    ("fused forward (data + negatives in one pass)", ("loss.fuse_forward=true",)),
    ("channels_last", ("performance.channels_last=true",)),
    ("bf16 autocast (NCHW)", ("performance.autocast=bf16",)),
    ("bf16 autocast + channels_last", ("performance.autocast=bf16", "performance.channels_last=true")),
    ("auto: precision and layout timed on the first batch",
     ("performance.autocast=auto", "performance.channels_last=auto")),
)
COMPILE_LEVER = ("torch.compile (backbone)", ("performance.compile=true",))
#: Levers that only mean something on CUDA.
DEVICE_LEVERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("replay buffer on device", ("sampler.init.on_device=true",)),
    ("CUDA graphs (K-step sampler loop)", ("performance.cuda_graphs=true",)),
    (
        "fast: channels_last + bf16 + CUDA graphs + buffer on device",
        ("performance.channels_last=true", "performance.autocast=bf16", "performance.cuda_graphs=true",
         "sampler.init.on_device=true"),
    ),
    (
        "fast + fused forward",
        ("performance.channels_last=true", "performance.autocast=bf16", "performance.cuda_graphs=true",
         "sampler.init.on_device=true", "loss.fuse_forward=true"),
    ),
)
DEVICE_COMPILE_LEVERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "fast, CUDA graphs via compile(reduce-overhead)",
        ("performance.channels_last=true", "performance.autocast=bf16", "performance.compile=true",
         "performance.compile_mode=reduce-overhead", "sampler.init.on_device=true"),
    ),
    (
        "fast + compile(default) + CUDA graphs",
        ("performance.channels_last=true", "performance.autocast=bf16", "performance.compile=true",
         "performance.cuda_graphs=true", "sampler.init.on_device=true"),
    ),
)


def lever_configurations(
    device: str | None, with_compile: bool, only: Sequence[str] = ()
) -> list[tuple[str, tuple[str, ...]]]:
    """The ``--levers`` configurations for a device: the reference first, CUDA-only ones next on CUDA,
    compile last.

    ``only`` keeps the configurations whose label contains one of its strings (case-insensitive).
    """
    levers = list(LEVERS) + ([COMPILE_LEVER] if with_compile else [])
    if device == "cuda":
        # the GPU's own levers first after the reference: a run cut short keeps the numbers that matter
        levers = [levers[0], *DEVICE_LEVERS, *levers[1:], *(DEVICE_COMPILE_LEVERS if with_compile else ())]
    if only:
        levers = [lever for lever in levers if any(part.lower() in lever[0].lower() for part in only)]
    if not levers:
        raise ValueError(f"no lever configuration matches --only {list(only)}")
    return levers


def projected_hours(iteration_ms: float, epochs: int, train_size: int, batch_size: int) -> float:
    """Wall-clock hours of ``epochs`` epochs of ``train_size // batch_size`` iterations each."""
    return epochs * max(1, train_size // batch_size) * iteration_ms / 3.6e6


def measure_levers(
    recipe: str | Path,
    overrides: Sequence[str] = (),
    *,
    with_compile: bool = False,
    only: Sequence[str] = (),
    json_path: Path | None = None,
    rounds: int = 1,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """``measure`` once per lever configuration; each result gains ``lever`` and ``lever_overrides``.

    With ``rounds`` > 1 the configurations are measured in turn ``rounds`` times (1, 2, ..., 1, 2,
    ...), and each row is the round whose JEM iteration is the median of its rounds (all of them
    in ``rounds_jem_iteration_ms``): on a shared machine a load change then reaches every row
    instead of the few measured while it lasted. The reference-style loop does not depend on the
    levers: it is timed (interleaved) with the first configuration of the first round only, whose
    row alone has ``ratio_reference_jem``; compare the other rows with it through their speed-up.
    With ``json_path`` the rows so far are rewritten after every measurement, so a run cut short
    (a time limit on a lent GPU) keeps what it measured.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    levers = lever_configurations(kwargs.get("device"), with_compile, only)
    # One discarded measurement first: the first build in a process pays one-time costs (lazy
    # kernel initialisation, allocator growth) that would otherwise count against the reference.
    measure(recipe, [*overrides, *LEVERS_OFF], **{**kwargs, "repeats": 1, "iters": 1, "reference": False})
    measured: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in levers}
    results: list[dict[str, Any]] = []
    for round_index in range(rounds):
        for index, (label, extra) in enumerate(levers):
            first = round_index == 0 and index == 0
            result = measure(recipe, [*overrides, *LEVERS_OFF, *extra], **kwargs, reference=first)
            result["lever"], result["lever_overrides"] = label, list(extra)
            measured[label].append(result)
            print(f"measured: {label}: {result['jem_iteration_ms']:.1f} ms per JEM iteration", file=sys.stderr, flush=True)
            results = [_median_round(measured[name]) for name, _ in levers if measured[name]]
            if json_path is not None:
                write_json(json_path, results)
    return results


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median JEM iteration (the lower middle one for an even count), with every
    round's JEM iteration and, from the first round, the reference-style ratio where it was timed."""
    ordered = sorted(rounds, key=lambda r: r["jem_iteration_ms"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds_jem_iteration_ms"] = [r["jem_iteration_ms"] for r in rounds]
    if "ratio_reference_jem" in rounds[0] and "ratio_reference_jem" not in chosen:
        chosen["reference_iteration_ms"] = rounds[0]["reference_iteration_ms"]
        chosen["ratio_reference_jem_first_round"] = rounds[0]["ratio_reference_jem"]
    return chosen


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (no NaN), creating parent folders. The file is replaced
    whole (temporary file, then rename): a run killed at its time limit leaves the last complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def lever_rows(
    results: list[dict[str, Any]], epochs: int | None = None, train_size: int | None = None
) -> list[dict[str, str]]:
    """The cells of a lever table, one ``{column: text}`` per configuration, speed-up relative to
    the first, the precision it ran under, and where measured (the first) the reference-style
    loop's time over its JEM iteration. With ``epochs`` and ``train_size`` they add iterations per
    second and the projected hours of a whole run (``epochs`` x ``train_size // batch_size``
    iterations, training steps only)."""
    reference = results[0]["jem_iteration_ms"]
    rows = []
    for r in results:
        ms = r["jem_iteration_ms"]
        row = {
            "configuration": r["lever"],
            "JEM iter ms": f"{ms:.1f}",
            "step ms": f"{r['sampler_step_ms']:.2f}",
            "JEM/plain": f"{r['ratio_jem_plain']:.2f}",
            "JEM/floor": f"{r['ratio_jem_floor']:.3f}",
            "speed-up": f"{reference / ms:.2f}x",
            "precision": r.get("precision", {}).get("choice", "?"),
            "reference-style/JEM": _ratio_text(r.get("ratio_reference_jem", r.get("ratio_reference_jem_first_round"))),
            "peak MiB": f"{r['peak_memory_jem_mib']:.0f}",
        }
        if epochs is not None and train_size is not None:
            row["it/s"] = f"{1000.0 / ms:.2f}"
            row[f"h/{epochs} ep"] = f"{projected_hours(ms, epochs, train_size, r['batch_size']):.2f}"
        rows.append(row)
    return rows


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def format_levers(
    results: list[dict[str, Any]], epochs: int | None = None, train_size: int | None = None
) -> str:
    """:func:`lever_rows` as a fixed-width text table (configuration left, numbers right)."""
    rows = lever_rows(results, epochs, train_size)
    widths = {key: max(len(key), *(len(row[key]) for row in rows)) for key in rows[0]}

    def line(cells: dict[str, str]) -> str:
        return " ".join(
            cells[k].ljust(w) if k == "configuration" else cells[k].rjust(w) for k, w in widths.items()
        )

    return "\n".join([line({k: k for k in widths}), *(line(row) for row in rows)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time one JEM training iteration against K sampler steps + the update and a plain classifier step."
    )
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/jem_digits.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides, e.g. train.batch_size=32")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations before each measurement")
    parser.add_argument("--iters", type=int, default=3, help="iterations per timed run")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="override the recipe's device")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="also write the numbers as JSON")
    parser.add_argument("--levers", action="store_true", help="measure every speed lever on and off")
    parser.add_argument("--with-compile", action="store_true", help="with --levers: include torch.compile (slow to build)")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="with --levers: measure the configurations in turn this many times; each row is its median round",
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="TEXT",
        help="with --levers: only configurations whose label contains TEXT (repeatable)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="with --levers: project the hours of this many epochs")
    parser.add_argument(
        "--train-size", type=int, default=None, help="with --epochs: training examples per epoch (CIFAR-10 recipe: 45000)"
    )
    args = parser.parse_intermixed_args(argv)
    if args.levers:
        try:
            results = measure_levers(
                args.recipe, args.overrides, with_compile=args.with_compile, only=args.only, json_path=args.json,
                rounds=args.rounds, repeats=args.repeats, warmup=args.warmup, iters=args.iters, device=args.device,
                threads=args.threads,
            )
        except (JemkitError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(format_levers(results, args.epochs, args.train_size))
        return 0
    try:
        result = measure(
            args.recipe,
            args.overrides,
            repeats=args.repeats,
            warmup=args.warmup,
            iters=args.iters,
            device=args.device,
            threads=args.threads,
        )
    except (JemkitError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json is not None:
        write_json(args.json, result)
    if not all(math.isfinite(result[f"{name}_ms"]) for name in TIMINGS):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
