"""The contracts every component implements.

Sign convention (one place, :class:`EnergyHead`): logits ``f(x)`` of shape ``[N, C]`` define
``E(x, y) = -f(x)[y]`` and ``E(x) = -logsumexp_y f(x)[y]``. Lower energy means more likely;
``p(x) ∝ exp(-E(x))``. Samplers only ever see an energy function ``x -> E(x)`` of shape ``[N]``.

Factories registered for each kind are called by :mod:`jemkit.build` as::

    backbone    factory(params, context) -> Backbone          (context.input_shape)
    head        factory(params, context) -> EnergyHead        (context.feature_dim, num_classes)
    chain_init  factory(params, context) -> ChainInit         (context.input_shape, num_classes)
    transition  factory(params, context) -> Transition
    loss        factory(params, context) -> Loss
    data        factory(params, context) -> DataSplits
    optimizer   factory(params, context, parameters) -> torch.optim.Optimizer; one with
                ``requires_closure = True`` (SAM) gets ``step(closure)`` after the gradients at the
                current weights are computed; ``closure()`` recomputes loss and gradients at its
                current weights with the same batch and the same negatives
    schedule    factory(params, context, optimizer) -> LRScheduler, stepped once per iteration
    ood         factory(params, context) -> Dataset of (x, y) out-of-distribution inputs
    feature_extractor  factory(params, context) -> FeatureExtractor (features and logits, for FID/IS)

This module is the public surface a plugin builds on (with :mod:`jemkit.hookspecs` and
:mod:`jemkit.errors`): every name in :data:`__all__` stays stable. Besides the component base
classes it holds what a loss receives (:class:`Sampler`), the metric keys the loop understands
(:data:`METRIC_LOSS`, :data:`METRIC_ENERGY_DATA`, ...) and what lifecycle hooks receive
(:class:`RunView`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from omegaconf import DictConfig

#: ``x -> E(x)``: per-sample energies ``[N]`` of a batch ``x``; lower is more likely.
EnergyFn = Callable[[Tensor], Tensor]


@dataclass
class BuildContext:
    """What a component may know about the experiment besides its own parameters."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: Shape of one input without the batch dimension: ``(C, H, W)`` for images, ``(D,)`` for vectors.
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    #: Width of the backbone's feature vector (set before heads are built).
    feature_dim: int | None = None
    #: Run directory for components that cache files (``None`` outside a run).
    run_dir: Path | None = None
    #: Training data, for components that fit statistics on it (informative initialisation).
    train_data: Dataset | None = None
    #: Test data (evaluation components such as OOD sets built from test pairs).
    test_data: Dataset | None = None
    #: Iterations per epoch and in total (set before optimisers and schedules are built).
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    seed: int = 0


# --------------------------------------------------------------------------- model


class Backbone(nn.Module, abc.ABC):
    """Maps a batch of inputs ``[N, *input_shape]`` to features ``[N, feature_dim]``."""

    feature_dim: int

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...


class EnergyHead(nn.Module, abc.ABC):
    """Maps features ``[N, D]`` to logits ``[N, C]`` and owns the energy sign convention."""

    num_classes: int

    @abc.abstractmethod
    def forward(self, features: Tensor) -> Tensor: ...

    def energy(self, logits: Tensor, y: Tensor | None = None) -> Tensor:
        """Energy ``[N]`` from logits: ``-logsumexp(logits)``, or ``-logits[y]`` given labels ``y``."""
        if y is None:
            return -torch.logsumexp(logits, dim=1)
        return -logits.gather(1, y.view(-1, 1).long()).squeeze(1)


class JointEnergyModel(nn.Module):
    """A classifier read as an energy model of ``p(x, y)``: backbone plus energy head."""

    def __init__(self, backbone: Backbone, head: EnergyHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, C]``."""
        return self.head(self.backbone(x))

    logits = forward

    def energy(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Energy ``[N]`` of inputs ``x`` (marginal, or joint with labels ``y``); lower is more likely."""
        return self.head.energy(self(x), y)

    def energy_from_logits(self, logits: Tensor, y: Tensor | None = None) -> Tensor:
        """Energy ``[N]`` from logits already computed, sparing a second forward pass."""
        return self.head.energy(logits, y)


# --------------------------------------------------------------------------- sampling


@dataclass
class ChainStart:
    """Starting points of a batch of chains, and what the initialiser needs to write them back."""

    x: Tensor
    #: Initialiser-private bookkeeping, e.g. replay-buffer slot indices.
    slots: Any = None
    #: Fraction of chains started from fresh noise rather than from memory, in [0, 1].
    reinit_fraction: float | Tensor = 1.0


class ChainInit(abc.ABC):
    """Where chains start: fresh noise, a persistent replay buffer, a fitted Gaussian, ..."""

    @abc.abstractmethod
    def start(self, n: int, y: Tensor | None, device: torch.device) -> ChainStart:
        """Starting points ``[n, *input_shape]`` for ``n`` chains (class-conditional when ``y`` is given)."""

    def finish(self, start: ChainStart, x_final: Tensor) -> None:
        """Take back the chains' final states (a replay buffer stores them); default: forget them."""

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors to carry in checkpoints (a replay buffer's contents); default: none."""
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} holds no state, got keys {sorted(state)}")


@dataclass
class StepResult:
    """One transition of a batch of chains."""

    x: Tensor
    #: Energies ``[N]`` at the input of this step (detached).
    energy: Tensor
    #: Mean L2 norm of the raw ``dE/dx`` at the input of this step, before any clipping or
    #: preconditioning the transition applies (0-dim tensor: no device sync).
    grad_norm: Tensor
    #: Metropolis acceptance rate of this step (0-dim tensor), ``None`` for unadjusted transitions.
    accept_rate: Tensor | None = None


class Transition(abc.ABC):
    """One Markov-chain step on ``x`` targeting ``p(x) ∝ exp(-E(x))``.

    Optional protocol: a transition that needs the model itself (PYLD steps through the
    backbone's ``first_layer``) defines ``bind(model, y)``; :meth:`jemkit.sampler.Sampler.sample`
    calls it with the model and the labels (or ``None``) before the first step of every call.
    ``bind`` may raise ``ValueError`` when the model lacks what the transition needs.

    ``graph_safe = True`` declares that :meth:`step` launches the same kernels whatever the values
    of ``x`` (no host synchronisation, no Python branch on tensor values, no state kept between
    calls), so ``performance.cuda_graphs`` may capture the K-step loop as one CUDA graph.

    ``differentiable = True`` declares that :meth:`differentiable_step` is implemented: the same
    update as :meth:`step`, drawing the same random numbers, but returned as a function of ``x``
    that autograd can differentiate (the end-to-end attack on ``jemkit eval``'s defence
    differentiates the refinement through it).
    """

    #: Whether the K-step loop of this transition may be captured as a CUDA graph.
    graph_safe: bool = False
    #: Whether :meth:`differentiable_step` is implemented.
    differentiable: bool = False

    @abc.abstractmethod
    def step(self, x: Tensor, energy_fn: EnergyFn) -> StepResult:
        """Advance every chain by one step; must not keep an autograd graph alive."""

    def differentiable_step(self, x: Tensor, energy_fn: EnergyFn) -> Tensor:
        """The new chain states ``[N, ...]`` of :meth:`step`, kept in the autograd graph of ``x``.

        ``x`` requires grad (or depends on a tensor that does) and grad mode is on; the energy's
        input gradient is taken with ``create_graph=True`` so that second-order gradients flow
        back to ``x``. Only for transitions that set ``differentiable = True``; the default raises
        :class:`NotImplementedError`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no differentiable step (its class sets differentiable = False); "
            "only transitions that declare differentiable = True can be differentiated through."
        )


def energy_and_grad(energy_fn: EnergyFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """Energies ``[N]`` at ``x`` and their input gradient ``dE/dx`` (both detached)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        energy = energy_fn(x)
        (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), grad.detach()


def energy_grad_in_graph(energy_fn: EnergyFn, x: Tensor) -> Tensor:
    """The input gradient ``dE/dx`` ``[N, ...]`` at ``x`` as a differentiable function of ``x``
    (``create_graph=True``), for :meth:`Transition.differentiable_step`; ``x`` must be in a graph."""
    (grad,) = torch.autograd.grad(energy_fn(x).sum(), x, create_graph=True)
    return grad


# --------------------------------------------------------------------------- evaluation


class FeatureExtractor(nn.Module, abc.ABC):
    """Maps inputs in ``[-1, 1]`` to features ``[N, feature_dim]`` and logits ``[N, num_classes]``.

    The ``feature_extractor`` contract (FID and Inception Score in ``jemkit eval``): a registered
    factory ``factory(params, context) -> FeatureExtractor`` receives the evaluated model's
    ``context.input_shape``; inputs are ``[N, *input_shape]`` and the extractor does any resizing
    or channel conversion itself.
    """

    feature_dim: int
    num_classes: int
    #: Where the weights came from (file and checksum, or how they were trained), for the report.
    weights: str = ""
    #: Data set whose classes the logits name (``digits``, ``imagenet``); class-conditional sample
    #: accuracy is measured only when it equals the evaluated run's data set.
    data_set: str | None = None

    @abc.abstractmethod
    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``[N, feature_dim]`` and class logits ``[N, num_classes]`` in one pass."""

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[N, feature_dim]``."""
        return self.features_and_logits(x)[0]


# --------------------------------------------------------------------------- training


@dataclass
class Batch:
    """One training batch: labelled inputs ``x`` (augmented), labels ``y``, and optionally the
    same images without augmentation ``x_px`` for the ``p(x)`` term (SADA-JEM)."""

    x: Tensor
    y: Tensor
    x_px: Tensor | None = None

    @property
    def px_inputs(self) -> Tensor:
        """Inputs whose energy the ``p(x)`` term lowers: ``x_px`` when present, else ``x``."""
        return self.x if self.x_px is None else self.x_px


# Metric keys. A loss reports its metrics under keys without prefix; the loop logs a key ``k`` as
# ``train/k`` (averaged over the steps between two log records and over data-parallel ranks) and a
# key that contains ``/`` as given (``sampler/grad_norm``).

#: Prefix the loop puts in front of a loss metric key without ``/`` in ``metrics.jsonl``.
TRAIN_PREFIX = "train/"
#: The value of the loss being minimised (logged as ``train/loss``; the progress bar shows it).
METRIC_LOSS = "loss"
#: Classification accuracy of the batch in ``[0, 1]`` (``train/acc``).
METRIC_ACC = "acc"
#: Mean energy ``E(x)`` of the batch's data inputs (energy units; lower is more likely).
METRIC_ENERGY_DATA = "energy_data"
#: Mean energy ``E(x)`` of the sampler's negatives. With :data:`METRIC_ENERGY_DATA` it gives the
#: logged ``train/energy_gap = energy_samples - energy_data`` and drives the divergence guard's
#: ``max_energy_gap``: a loss with a ``p(x)`` term should report both.
METRIC_ENERGY_SAMPLES = "energy_samples"
#: :attr:`LossOutput.histograms` key of the per-input energies ``[N]`` of the data inputs.
HISTOGRAM_ENERGY_DATA = "energy/data"
#: :attr:`LossOutput.histograms` key of the per-input energies ``[N]`` of the sampler's negatives.
HISTOGRAM_ENERGY_SAMPLES = "energy/samples"


@dataclass
class LossOutput:
    """A scalar loss to minimise, the metrics to log, and optional per-input values for histograms.

    ``metrics`` values are plain floats or 0-dim tensors (detached; a tensor stays on its device
    and is read only when a log record is written, so a loss never has to wait for the device).
    Keys have no prefix (see :data:`TRAIN_PREFIX`); ``loss`` and ``acc`` are expected, and a loss
    with a ``p(x)`` term reports :data:`METRIC_ENERGY_DATA` and :data:`METRIC_ENERGY_SAMPLES`.

    ``histograms`` maps a name to detached 1-D tensors of per-input values of this batch, e.g.
    :data:`HISTOGRAM_ENERGY_DATA` and :data:`HISTOGRAM_ENERGY_SAMPLES`; at every log step the loop
    hands the last batch's to the ``jemkit_log_histogram`` hook (copied to the CPU only when some
    plugin implements it).
    """

    loss: Tensor
    metrics: dict[str, float | Tensor] = field(default_factory=dict)
    histograms: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class Sampler(Protocol):
    """What a loss receives as ``sampler``: draws approximate samples of ``p(x) ∝ exp(-E(x))``.

    ``sample(model, n)`` runs ``n`` chains (start from the recipe's chain initialiser, then K
    transitions on ``model.energy``) and returns the detached final states ``[n, *input_shape]``;
    with labels ``y`` ``[n]`` the chains target ``p(x|y)`` through ``E(x, y)``. ``steps`` overrides
    K for this call and ``persist=False`` leaves a replay buffer untouched. The model is put in the
    recipe's ``sampler.model_mode`` and its weights frozen during the call, then restored. When an
    optimiser re-evaluates the loss (SAM), the same call returns the same negatives again.
    """

    def sample(
        self, model: JointEnergyModel, n: int, y: Tensor | None = None, *, steps: int | None = None, persist: bool = True
    ) -> Tensor: ...


class Loss(abc.ABC):
    """Training objective; receives the model, a batch and (when it needs one) the sampler."""

    #: Whether this loss draws negatives from the sampler (its diagnostics are then logged).
    needs_sampler: bool = False

    @abc.abstractmethod
    def __call__(self, model: JointEnergyModel, batch: Batch, sampler: Sampler) -> LossOutput:
        """The loss of ``batch`` under ``model``; negatives, if any, from ``sampler.sample``."""


# --------------------------------------------------------------------------- data


@dataclass
class DataSplits:
    """A labelled data set: train and test splits of ``(x, y)`` pairs.

    Inputs are float tensors scaled to ``[-1, 1]`` (plus any input noise the recipe adds);
    labels are integer class indices in ``[0, num_classes)``.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    val: Dataset | None = None
    #: The training split without augmentation, for fitting statistics (may equal ``train``).
    train_plain: Dataset | None = None
    class_names: list[str] | None = None


def parameters_requiring_grad(module: nn.Module) -> Iterable[nn.Parameter]:
    """The parameters of ``module`` that an optimiser should update."""
    return (p for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- lifecycle


@runtime_checkable
class RunView(Protocol):
    """What lifecycle and logger hooks receive as ``run``: a stable, read-mostly view of a training run.

    Each plugin gets its own view (``plugin`` is its name; :meth:`write_file` writes under
    ``run_dir/plugins/<plugin>/``). The objects it hands out are the run's own: a plugin may read
    the model's weights or change the optimiser's learning rate, and must not replace them.
    """

    #: Name of the plugin this view was made for.
    plugin: str

    @property
    def step(self) -> int:
        """Optimiser steps taken so far (0 before the first)."""

    @property
    def epoch(self) -> int:
        """Epochs completed so far."""

    @property
    def run_dir(self) -> Path:
        """The run directory (``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ...)."""

    @property
    def config(self) -> DictConfig:
        """The run's resolved recipe, read-only (a plugin's own top-level section included)."""

    @property
    def model(self) -> JointEnergyModel:
        """The model being trained (never a data-parallel wrapper)."""

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The run's optimiser."""

    @property
    def sampler(self) -> Sampler:
        """The run's sampler (``sampler.steps`` is the recipe's K)."""

    @property
    def data(self) -> DataSplits:
        """The run's data set."""

    @property
    def context(self) -> BuildContext:
        """The build context: device, input shape, number of classes, steps per epoch, seed, ..."""

    @property
    def device(self) -> torch.device:
        """The device the model trains on."""

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that writes files); always true without torchrun."""

    def log(self, metrics: Mapping[str, float | Tensor]) -> None:
        """Add ``metrics`` (floats or 0-dim tensors, keys logged as given, e.g. ``ema/decay``) to the
        next record of ``metrics.jsonl``; a key logged twice before it is written keeps the latest value."""

    def write_file(self, name: str, data: bytes | str) -> Path:
        """Write ``data`` atomically to ``run_dir/plugins/<plugin>/<name>`` (rank 0 only; other ranks
        write nothing) and return that path. ``name`` is a relative path without ``..``."""


__all__ = [
    "HISTOGRAM_ENERGY_DATA",
    "HISTOGRAM_ENERGY_SAMPLES",
    "METRIC_ACC",
    "METRIC_ENERGY_DATA",
    "METRIC_ENERGY_SAMPLES",
    "METRIC_LOSS",
    "TRAIN_PREFIX",
    "Backbone",
    "Batch",
    "BuildContext",
    "ChainInit",
    "ChainStart",
    "DataSplits",
    "EnergyFn",
    "EnergyHead",
    "FeatureExtractor",
    "JointEnergyModel",
    "Loss",
    "LossOutput",
    "RunView",
    "Sampler",
    "StepResult",
    "Transition",
    "energy_and_grad",
    "energy_grad_in_graph",
    "parameters_requiring_grad",
]
