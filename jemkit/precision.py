"""``performance.autocast: auto`` and ``performance.channels_last: auto``: the fastest precision and
memory format that agree with fp32, measured on the first batch before training.

The candidates are fp32 and bf16, each in NCHW and in channels_last (NHWC) memory format; bf16
only where the device has it (CUDA: ``torch.cuda.is_bf16_supported()``; CPU: oneDNN's bf16 path,
which needs AVX-512 and is fast with ``avx512_bf16`` or AMX), channels_last only for image
inputs. An explicit value in the recipe fixes its setting (only the other one is chosen).

For each candidate, on a copy of the model (the run's model, optimiser, RNG streams and batch
norm statistics are left alone), on the first ``batch_size`` training examples:

1. **energy and input gradient**: ``E(x)`` and ``dE/dx`` as one sampler transition computes them
   (the sampler's model mode, weights frozen as the sampler freezes them);
2. **one update**: a forward pass in train mode, cross-entropy plus the mean energy, backward,
   and an SGD step on the copy.

The first call of each is a warm-up (untimed: it pays one-time costs such as oneDNN primitive
creation); then timed calls, the fastest kept: at most :data:`REPEATS`, and none after the timed
calls have taken :data:`TIMING_BUDGET_S` together. The cost of an iteration is estimated
as ``K * energy_and_grad + update`` (``K``: the sampler's steps, 0 for a loss without a sampler)
and the candidate with the lowest estimate wins, with three rules that keep a run from changing
precision over noise:

* a bf16 candidate passes only if its warm-up energies and input gradients agree with the fp32
  ones on the same batch within :data:`ENERGY_TOLERANCE` and :data:`GRAD_TOLERANCE`;
* a candidate replaces the simpler one before it in :func:`candidates` order (fp32 NCHW, fp32
  channels_last, bf16 NCHW, bf16 channels_last) only when its estimate is at least
  :data:`MIN_GAIN` lower;
* a network that makes under :data:`MIN_FORWARD_MACS` multiply-adds per forward pass of the
  batch keeps the simplest candidate without trying the others.

A candidate whose first timed call costs :data:`GIVE_UP_FACTOR` times the best estimate so far is
not timed further (an emulated bf16 path can be 15x slower). The choice, every timing and the
agreement numbers are a :class:`PrecisionChoice`; a run stores it as ``RUN_DIR/precision.json``,
keeps it on resume, and ``jemkit eval`` and ``jemkit sample`` read it back
(:func:`run_performance`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jemkit.contracts import JointEnergyModel, energy_and_grad
from jemkit.distributed import DistInfo, broadcast_object
from jemkit.performance import AUTO, PerformanceParams, apply_precision, autocast, prepare_input
from jemkit.runlog import to_number
from jemkit.sampler import frozen_weights, model_mode

#: Largest accepted energy error of a bf16 candidate against fp32 on the first batch:
#: ``max_i |E(x_i) - E_fp32(x_i)| / max(1, max_i |E_fp32(x_i)|)`` (relative, with a floor of one nat).
ENERGY_TOLERANCE = 0.02
#: Largest accepted input-gradient error: ``||G - G_fp32|| / ||G_fp32||`` over the whole batch
#: (Frobenius norms). bf16 keeps 8 significant bits; measured: 0.03-0.08 at initialisation (digits
#: convnet, WRN-10-2, WRN-28-10), 0.08-0.10 for the trained digits JEM (benchmarks/README.md).
GRAD_TOLERANCE = 0.15
#: A candidate replaces a simpler one only when its estimated iteration is at least this much cheaper.
MIN_GAIN = 0.10
#: A candidate whose first timed call costs this many times the best estimate so far is not timed further.
GIVE_UP_FACTOR = 3.0
#: Below this many multiply-adds in one forward pass of the batch (convolutions and linear layers),
#: only the simplest candidate is kept: a change could save at most a few milliseconds, timings
#: that short are mostly noise, and a count (unlike a timing) gives the same answer on every run.
MIN_FORWARD_MACS = 10_000_000
#: At most this many timed calls per candidate after the warm-up (the fastest is kept) ...
REPEATS = 5
#: ... and no further call once the timed calls of a candidate have taken this long together (s):
#: cheap candidates get several calls (one descheduled call on a busy machine does not decide),
#: expensive ones one call (WRN-10-2 at batch 64 on one CPU core: about 4 s for all four).
TIMING_BUDGET_S = 0.25
#: Name of the stored choice in a run directory.
FILE_NAME = "precision.json"
#: CPU flags of native bf16 (and int8 VNNI) matrix arithmetic, reported with every choice.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni", "avx512_vnni")


@dataclass(frozen=True)
class Candidate:
    """One precision setting: the autocast type (``none`` is fp32) and the memory format."""

    autocast: str
    channels_last: bool

    @property
    def label(self) -> str:
        """``fp32``, ``bf16``, ``fp32+channels_last``, ..."""
        name = "fp32" if self.autocast == "none" else self.autocast
        return f"{name}+channels_last" if self.channels_last else name


@dataclass
class Agreement:
    """How far a candidate's energies and input gradients are from fp32's on the same batch."""

    #: ``max |E - E_fp32| / max(1, max |E_fp32|)`` (dimensionless).
    energy_error: float
    #: ``||dE/dx - dE/dx_fp32|| / ||dE/dx_fp32||`` over the batch (dimensionless).
    grad_error: float

    @property
    def passed(self) -> bool:
        return (
            math.isfinite(self.energy_error) and math.isfinite(self.grad_error)
            and self.energy_error <= ENERGY_TOLERANCE and self.grad_error <= GRAD_TOLERANCE
        )


def agreement(reference: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor]) -> Agreement:
    """Compare ``(energies [N], input gradients [N, ...])`` of a candidate with the fp32 reference."""
    e_ref, g_ref = (t.detach().float() for t in reference)
    e, g = (t.detach().float() for t in other)
    energy_scale = max(1.0, float(e_ref.abs().max()))
    energy_error = float((e - e_ref).abs().max()) / energy_scale
    grad_norm = float(g_ref.norm())
    grad_error = float((g - g_ref).norm()) / grad_norm if grad_norm > 0 else float((g - g_ref).norm())
    return Agreement(energy_error, grad_error)


@dataclass
class Measured:
    """The timings of one candidate (milliseconds) and its agreement with fp32."""

    candidate: Candidate
    #: One energy + input-gradient call (a sampler transition's network work), ms.
    energy_grad_ms: float
    #: One update (forward, backward, SGD step), ms.
    update_ms: float
    #: ``K * energy_grad_ms + update_ms``: the estimated cost of one training iteration, ms.
    estimate_ms: float
    #: Against fp32 (bf16 candidates chosen by ``auto``); ``None`` where no check applies.
    agreement: Agreement | None = None
    #: False when timing stopped after one timed call (see :data:`GIVE_UP_FACTOR`).
    complete: bool = True

    @property
    def passed(self) -> bool:
        return self.agreement is None or self.agreement.passed

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "choice": self.candidate.label,
            "autocast": self.candidate.autocast,
            "channels_last": self.candidate.channels_last,
            "energy_grad_ms": round(self.energy_grad_ms, 3),
            "update_ms": round(self.update_ms, 3),
            "estimate_ms": round(self.estimate_ms, 3),
            "complete": self.complete,
            "passed": self.passed,
        }
        if self.agreement is not None:
            record["energy_error"] = to_number(self.agreement.energy_error)
            record["grad_error"] = to_number(self.agreement.grad_error)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Measured:
        check = None
        if "energy_error" in record:
            check = Agreement(float(record["energy_error"]), float(record["grad_error"]))
        return cls(
            Candidate(str(record["autocast"]), bool(record["channels_last"])),
            float(record["energy_grad_ms"]), float(record["update_ms"]), float(record["estimate_ms"]),
            check, bool(record.get("complete", True)),
        )


def default_clock() -> float:
    """Seconds from a monotonic clock (``time.perf_counter``); tests replace it to fake timings."""
    return time.perf_counter()


# --------------------------------------------------------------------------- hardware


def cpu_flags() -> list[str]:
    """The bf16-related flags of this CPU (:data:`BF16_CPU_FLAGS` found in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in BF16_CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 autocast is a candidate on ``device``, and why (one phrase)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"torch.cuda.is_bf16_supported() is {ok}"
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            ok = bool(torch.backends.mkldnn.is_available() and check is not None and check())
        except RuntimeError:
            ok = False
        flags = ", ".join(cpu_flags()) or "none"
        return ok, f"oneDNN bf16 {'available' if ok else 'not available'} (CPU flags: {flags})"
    return False, f"bf16 autocast is not tried on {device.type} devices"


def hardware(device: torch.device) -> dict[str, Any]:
    """What the timings were taken on: device, its name, torch, CPU capability and bf16 flags."""
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
    }
    info["bf16_supported"], info["bf16_reason"] = bf16_support(device)
    return info


# --------------------------------------------------------------------------- candidates and choice


def candidates(params: PerformanceParams, device: torch.device, image_input: bool) -> list[Candidate]:
    """The settings to time, simplest first: explicit values fixed, ``auto`` ones enumerated.

    ``autocast: auto`` tries fp32 and, where :func:`bf16_support` allows, bf16;
    ``channels_last: auto`` tries NCHW and, for image inputs (4-D batches), channels_last.
    """
    if params.autocast == AUTO:
        types = ["none", "bf16"] if bf16_support(device)[0] else ["none"]
    else:
        types = [params.autocast]
    if params.channels_last == AUTO:
        layouts = [False, True] if image_input else [False]
    else:
        layouts = [bool(params.channels_last)]
    return [Candidate(t, layout) for t in types for layout in layouts]


def estimate(energy_grad_ms: float, update_ms: float, steps: int) -> float:
    """Estimated iteration cost (ms): ``steps`` sampler transitions plus one update."""
    return steps * energy_grad_ms + update_ms


def choose(measured: list[Measured], min_gain: float = MIN_GAIN) -> Candidate:
    """The winner among ``measured`` (in :func:`candidates` order; the first is the baseline).

    Candidates that failed the agreement check are out. Walking in order, a candidate replaces the
    current best only when its estimate is below ``(1 - min_gain)`` times the best's, so a change
    of precision or layout must pay for itself by more than timing noise.
    """
    if not measured:
        raise ValueError("choose needs at least one measured candidate")
    best = measured[0]
    for item in measured[1:]:
        if item.passed and item.estimate_ms < (1.0 - min_gain) * best.estimate_ms:
            best = item
    return best.candidate


# --------------------------------------------------------------------------- timing


class CandidateWork(Protocol):
    """The two timed pieces of work of one candidate."""

    def energy_grad(self) -> tuple[Tensor, Tensor]: ...

    def update(self) -> None: ...


def time_candidates(
    todo: list[Candidate],
    make_work: Callable[[Candidate], CandidateWork],
    steps: int,
    *,
    clock: Callable[[], float] | None = None,
    sync: Callable[[], None] = lambda: None,
    repeats: int = REPEATS,
    budget_s: float = TIMING_BUDGET_S,
    check: Callable[[Candidate], bool] = lambda c: c.autocast != "none",
) -> list[Measured]:
    """Time every candidate of ``todo`` (see the module docstring); one :class:`Measured` each.

    Per candidate: one untimed warm-up call of both pieces of work (first calls pay one-time
    costs such as oneDNN primitive creation), then up to ``repeats`` timed calls while they have
    taken under ``budget_s`` together, the fastest kept. A candidate stops after its first timed
    call when it disagrees with fp32 or costs
    :data:`GIVE_UP_FACTOR` times the best so far. ``clock`` returns seconds (injectable for
    tests); ``sync`` waits for the device. The warm-up energies and gradients of the first fp32
    candidate are the reference of the agreement check, which runs where ``check`` is true.
    """
    clock = clock or default_clock
    results: list[Measured] = []
    reference: tuple[Tensor, Tensor] | None = None

    def timed(work: CandidateWork) -> tuple[float, float]:
        sync()
        start = clock()
        work.energy_grad()
        sync()
        middle = clock()
        work.update()
        sync()
        end = clock()
        return (middle - start) * 1e3, (end - middle) * 1e3

    for candidate in todo:
        work = make_work(candidate)
        outputs = work.energy_grad()
        work.update()
        if reference is None and candidate.autocast == "none":
            reference = outputs
        check_result = agreement(reference, outputs) if reference is not None and check(candidate) else None
        grad_ms, update_ms = timed(work)
        spent_s = (grad_ms + update_ms) / 1e3
        best = min((r.estimate_ms for r in results if r.passed), default=math.inf)
        complete = estimate(grad_ms, update_ms, steps) <= GIVE_UP_FACTOR * best
        if complete and (check_result is None or check_result.passed):
            for _ in range(repeats - 1):
                if spent_s >= budget_s:
                    break
                more_grad, more_update = timed(work)
                spent_s += (more_grad + more_update) / 1e3
                grad_ms, update_ms = min(grad_ms, more_grad), min(update_ms, more_update)
        results.append(
            Measured(candidate, grad_ms, update_ms, estimate(grad_ms, update_ms, steps), check_result, complete)
        )
        del work
    return results


class _ModelWork:
    """A candidate's work on its own copy of the model: energy + input gradient, and one update."""

    def __init__(
        self, model: JointEnergyModel, candidate: Candidate, x: Tensor, y: Tensor | None,
        device: torch.device, mode: str, freeze_weights: bool,
    ) -> None:
        self.params = PerformanceParams(autocast=candidate.autocast, channels_last=candidate.channels_last)
        layout = torch.channels_last if candidate.channels_last else torch.contiguous_format
        self.model = apply_precision(_eager_copy(model).to(memory_format=layout), self.params)
        self.x = prepare_input(x, self.params)
        self.y = y
        self.device, self.mode, self.freeze = device, mode, freeze_weights
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(trainable, lr=1e-6) if trainable else None

    def energy_grad(self) -> tuple[Tensor, Tensor]:
        with model_mode(self.model, self.mode), frozen_weights(self.model, self.freeze):
            with autocast(self.device, self.params):
                return energy_and_grad(self.model.energy, self.x)

    def update(self) -> None:
        self.model.train()
        with autocast(self.device, self.params):
            logits = self.model(self.x)
            loss = self.model.energy_from_logits(logits).mean()
            if self.y is not None:
                loss = loss + F.cross_entropy(logits, self.y)
        if self.optimizer is None:
            return
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def forward_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-adds of the convolutions and linear layers in one forward pass of ``model`` on ``x``
    (eval mode, no gradients; other layers are not counted)."""
    total = 0

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        if not isinstance(output, Tensor):
            return
        if isinstance(module, nn.modules.conv._ConvNd):
            total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad(), model_mode(model, "eval"):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def _eager_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that runs eagerly: ``Module.compile`` keeps a compiled call of the
    *original* module, which a deep copy would share, so the copy drops it."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    return twin


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Run a block without changing python's, numpy's or torch's (CPU and CUDA) RNG streams."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


# --------------------------------------------------------------------------- the choice


@dataclass
class PrecisionChoice:
    """What a run uses for ``performance.autocast`` and ``performance.channels_last``, and why."""

    autocast: str
    channels_last: bool
    #: ``timed`` (chosen now), ``stored`` (kept from ``precision.json`` on resume) or ``recipe``
    #: (both settings explicit: nothing to choose).
    source: str
    #: The recipe's values (``auto`` where the choice was left to timing).
    requested: dict[str, Any] = field(default_factory=dict)
    measured: list[Measured] = field(default_factory=list)
    hardware: dict[str, Any] = field(default_factory=dict)
    #: Shape of the timed batch ``[N, ...]`` and the K of the estimate.
    batch_shape: list[int] = field(default_factory=list)
    steps: int = 0
    #: Wall-clock cost of the selection, seconds.
    seconds: float = 0.0
    #: Multiply-adds of one forward pass of the batch (:func:`forward_macs`; 0 where not counted).
    forward_macs: int = 0

    @property
    def label(self) -> str:
        return Candidate(self.autocast, self.channels_last).label

    def performance(self, params: PerformanceParams) -> PerformanceParams:
        """``params`` with its precision settings replaced by this choice."""
        return params.with_precision(self.autocast, self.channels_last)

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``precision.json``, the metrics event, the summary)."""
        return {
            "choice": self.label,
            "autocast": self.autocast,
            "channels_last": self.channels_last,
            "source": self.source,
            "requested": dict(self.requested),
            "candidates": [m.to_record() for m in self.measured],
            "tolerance": {
                "energy": ENERGY_TOLERANCE, "grad": GRAD_TOLERANCE, "min_gain": MIN_GAIN,
                "min_forward_macs": MIN_FORWARD_MACS,
            },
            "hardware": dict(self.hardware),
            "batch_shape": list(self.batch_shape),
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "forward_macs": self.forward_macs,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PrecisionChoice:
        return cls(
            autocast=str(record["autocast"]),
            channels_last=bool(record["channels_last"]),
            source=str(record.get("source", "stored")),
            requested=dict(record.get("requested", {})),
            measured=[Measured.from_record(m) for m in record.get("candidates", [])],
            hardware=dict(record.get("hardware", {})),
            batch_shape=list(record.get("batch_shape", [])),
            steps=int(record.get("steps", 0)),
            seconds=float(record.get("seconds", 0.0)),
            forward_macs=int(record.get("forward_macs", 0)),
        )

    def summary(self) -> dict[str, Any]:
        """Flat keys for ``summary.json``: ``precision`` (the choice), ``precision/source`` and
        ``precision/<candidate>_ms`` (each candidate's estimated iteration, ms)."""
        return {
            "precision": self.label,
            "precision/source": self.source,
            **{f"precision/{m.candidate.label}_ms": round(m.estimate_ms, 3) for m in self.measured},
        }

    def event(self, step: int) -> dict[str, Any]:
        """The ``metrics.jsonl`` event record (``{"step", "event": "precision", ...}``) of the whole choice."""
        return {"step": step, "event": "precision", **self.to_record()}

    def describe(self) -> str:
        """One line for the console: the choice, how it was made, the estimated iteration of each candidate."""
        text = f"precision: {self.label} ({self.source}"
        if self.measured:
            times = ", ".join(
                f"{m.candidate.label} {m.estimate_ms:.0f} ms"
                + ("" if m.passed else " (disagrees with fp32)")
                + ("" if m.complete else " (timed once)")
                for m in self.measured
            )
            text += f" on {self.hardware.get('device_name', '?')}, estimated iteration: {times}; {self.seconds:.1f} s"
        return text + ")"


def choose_precision(
    model: JointEnergyModel,
    x: Tensor,
    y: Tensor | None,
    params: PerformanceParams,
    *,
    steps: int,
    mode: str = "eval",
    freeze_weights: bool = True,
    clock: Callable[[], float] | None = None,
    repeats: int = REPEATS,
) -> PrecisionChoice:
    """Time the candidates of ``params`` on the batch ``(x, y)`` with copies of ``model``; the choice.

    ``steps`` weighs the energy-and-gradient time in the estimate (the sampler's K; 0 without a
    sampler); ``mode`` and ``freeze_weights`` are the sampler's. ``model`` itself, the global RNG
    streams and the batch are not changed.
    """
    clock = clock or default_clock
    device = x.device
    requested = {"autocast": params.autocast, "channels_last": params.channels_last}
    if params.settled:
        return PrecisionChoice(params.autocast, bool(params.channels_last), "recipe", requested,
                               hardware=hardware(device), batch_shape=list(x.shape), steps=steps)
    todo = candidates(params, device, image_input=x.dim() == 4)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    started = clock()
    with _rng_untouched():
        macs = forward_macs(model, x)
        if macs < MIN_FORWARD_MACS:
            todo = todo[:1]  # too small to be worth a change; timed for the record only
        measured = time_candidates(
            todo,
            lambda c: _ModelWork(model, c, x, y, device, mode, freeze_weights),
            steps,
            clock=clock,
            sync=sync,
            repeats=repeats,
            check=lambda c: c.autocast != "none" and params.autocast == AUTO,
        )
    winner = choose(measured)
    return PrecisionChoice(
        winner.autocast, winner.channels_last, "timed", requested, measured, hardware(device),
        list(x.shape), steps, clock() - started, macs,
    )


# --------------------------------------------------------------------------- runs


def first_examples(dataset: Any, n: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The first ``n`` examples of ``dataset`` as a batch ``(x [n, ...], y [n])`` on ``device``."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).float().to(device)
    y = None
    if len(items[0]) > 1 and torch.as_tensor(items[0][1]).dim() == 0:
        y = torch.as_tensor([int(item[1]) for item in items], device=device)
    return x, y


def load_choice(run_dir: Path) -> PrecisionChoice | None:
    """The choice stored in ``RUN_DIR/precision.json``, or ``None`` (absent or unreadable)."""
    path = Path(run_dir) / FILE_NAME
    try:
        return PrecisionChoice.from_record(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_choice(run_dir: Path, choice: PrecisionChoice) -> Path:
    """Write ``RUN_DIR/precision.json`` atomically; its path."""
    path = Path(run_dir) / FILE_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(choice.to_record(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _from_stored(
    params: PerformanceParams, stored: PrecisionChoice | None, device: torch.device
) -> PrecisionChoice | None:
    """The stored choice with the recipe's explicit values on top, if it settles every ``auto`` here."""
    if stored is None:
        return None
    if params.autocast == AUTO and stored.autocast == "bf16" and not bf16_support(device)[0]:
        return None  # resumed where bf16 is not available: choose again
    autocast_type = stored.autocast if params.autocast == AUTO else params.autocast
    layout = stored.channels_last if params.channels_last == AUTO else bool(params.channels_last)
    return PrecisionChoice(
        autocast_type, layout, "stored", {"autocast": params.autocast, "channels_last": params.channels_last},
        stored.measured, stored.hardware, stored.batch_shape, stored.steps, 0.0, stored.forward_macs,
    )


def settle_for_run(
    experiment: Any, run_dir: Path, dist: DistInfo | None = None, *, clock: Callable[[], float] | None = None
) -> PrecisionChoice:
    """Settle a run's precision before its first training step; applied to ``experiment`` in place.

    The choice stored in ``run_dir`` (a resumed run) is kept; otherwise rank 0 times the candidates
    on the first ``batch_size / world_size`` training examples and every rank gets its choice. The
    model is put in the chosen memory format, ``experiment.performance`` gets the chosen values,
    and rank 0 writes ``precision.json`` (when ``run_dir`` exists).
    """
    dist = dist or DistInfo()
    params: PerformanceParams = experiment.performance
    device = experiment.context.device
    choice = _from_stored(params, load_choice(run_dir), device) if dist.is_main else None
    if choice is None and dist.is_main:
        dataset = experiment.context.train_data or experiment.data.train
        with _rng_untouched():
            x, y = first_examples(dataset, max(1, experiment.train.batch_size // dist.world_size), device)
        sampler = experiment.sampler
        steps = int(sampler.steps) if experiment.loss.needs_sampler else 0
        choice = choose_precision(
            experiment.model, x, y, params, steps=steps, mode=sampler.model_mode,
            freeze_weights=sampler.freeze_weights, clock=clock,
        )
    record = broadcast_object(choice.to_record() if choice is not None else None, dist)
    choice = PrecisionChoice.from_record(record)
    experiment.performance = choice.performance(params)
    apply_precision(experiment.model, experiment.performance)
    if dist.is_main and choice.source != "stored" and Path(run_dir).is_dir():
        save_choice(run_dir, choice)
    return choice


def run_performance(run_dir: Path, params: PerformanceParams) -> PerformanceParams:
    """The precision a finished run trained with, for ``jemkit eval`` and ``jemkit sample``.

    ``auto`` settings are filled from ``RUN_DIR/precision.json``; without one (a run that never
    trained, or written before the file existed) ``auto`` means fp32 in NCHW.
    """
    stored = load_choice(run_dir)
    autocast_type = params.autocast
    layout = params.channels_last
    if autocast_type == AUTO:
        autocast_type = stored.autocast if stored is not None else "none"
    if layout == AUTO:
        layout = stored.channels_last if stored is not None else False
    return params.with_precision(autocast_type, bool(layout))
