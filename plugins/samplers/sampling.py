"""Built-in sampling components: SGLD transitions, uniform-noise and replay-buffer initialisers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import (
    BuildContext,
    ChainInit,
    ChainStart,
    EnergyFn,
    StepResult,
    Transition,
    energy_and_grad,
    energy_grad_in_graph,
)


def _mean_norm(grad: Tensor) -> Tensor:
    return grad.flatten(1).norm(dim=1).mean()


# --------------------------------------------------------------------------- transitions


@dataclass
class SGLDParams:
    """JEM's SGLD: ``x <- x - step_size * dE/dx + noise * N(0, I)``, step and noise set independently."""

    #: Multiplier of the energy gradient dE/dx per step (JEM: 1.0).
    step_size: float = 1.0
    #: Std of the Gaussian noise added per step, in input units (data in [-1, 1]; JEM: 0.01).
    noise: float = 0.01

    def __post_init__(self) -> None:
        if self.step_size < 0 or self.noise < 0:
            raise ValueError(f"step_size and noise must be non-negative, got {self.step_size}, {self.noise}")


class SGLD(Transition):
    """JEM-style SGLD with decoupled step size (on the gradient) and noise std (input units)."""

    graph_safe = True
    differentiable = True

    def __init__(self, step_size: float, noise: float) -> None:
        self.step_size = step_size
        self.noise = noise

    def _update(self, x: Tensor, grad: Tensor) -> Tensor:
        """``x - step_size * grad + noise * N(0, I)``: a descent step on E plus Gaussian noise."""
        x_new = x - self.step_size * grad
        if self.noise > 0:
            x_new = x_new + self.noise * torch.randn_like(x)
        return x_new

    def step(self, x: Tensor, energy_fn: EnergyFn) -> StepResult:
        energy, grad = energy_and_grad(energy_fn, x)
        return StepResult(x=self._update(x, grad), energy=energy, grad_norm=_mean_norm(grad))

    def differentiable_step(self, x: Tensor, energy_fn: EnergyFn) -> Tensor:
        """The SGLD update of :meth:`step` as a function of ``x`` (second-order autograd through dE/dx)."""
        return self._update(x, energy_grad_in_graph(energy_fn, x))


@dataclass
class LangevinParams:
    """Textbook unadjusted Langevin: ``x <- x - step_size * dE/dx + sqrt(2 * step_size) * N(0, I)``."""

    step_size: float = 0.01

    def __post_init__(self) -> None:
        if self.step_size <= 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")


def build_sgld(params: SGLDParams, context: BuildContext) -> SGLD:
    """JEM SGLD: gradient step and Gaussian noise with independently set sizes."""
    return SGLD(params.step_size, params.noise)


def build_langevin(params: LangevinParams, context: BuildContext) -> SGLD:
    """Unadjusted Langevin algorithm: noise std sqrt(2 * step_size), unbiased as step -> 0."""
    return SGLD(params.step_size, math.sqrt(2.0 * params.step_size))


# --------------------------------------------------------------------------- initialisers


@dataclass
class UniformParams:
    """Fresh chains from ``U(low, high)`` every call (short-run sampling)."""

    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got low={self.low}, high={self.high}")


def _require_shape(context: BuildContext) -> tuple[int, ...]:
    if context.input_shape is None:
        raise ValueError("the chain initialiser needs the input shape, which the data set provides")
    return tuple(context.input_shape)


class UniformNoise(ChainInit):
    """Every chain starts from uniform noise: short-run sampling."""

    def __init__(self, shape: tuple[int, ...], low: float = -1.0, high: float = 1.0) -> None:
        self.shape = shape
        self.low = low
        self.high = high

    def noise(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """``n`` fresh draws of ``U(low, high)`` of the input shape."""
        return torch.rand(n, *self.shape, device=device) * (self.high - self.low) + self.low

    def start(self, n: int, y: Tensor | None, device: torch.device) -> ChainStart:
        return ChainStart(x=self.noise(n, device), reinit_fraction=1.0)


def build_uniform(params: UniformParams, context: BuildContext) -> UniformNoise:
    """Short-run initialiser: every chain starts from U(low, high) noise."""
    return UniformNoise(_require_shape(context), params.low, params.high)


#: How a class-conditional buffer's unlabelled draws pick a class block (:class:`ReplayBufferParams`).
CLASS_PRIORS = ("uniform", "data")


@dataclass
class ReplayBufferParams:
    """Persistent replay buffer of past chain states (JEM: 10,000 samples, reinit 0.05)."""

    size: int = 10000
    #: Probability that a chain restarts from uniform noise instead of a stored state.
    reinit_freq: float = 0.05
    #: Split the buffer into ``num_classes`` equal blocks, one per class.
    class_conditional: bool = False
    #: With ``class_conditional``: how a draw without labels (the p(x) term's negatives) picks its
    #: block. ``uniform``: every class alike (JEM's setting); ``data``: in proportion to the training
    #: set's class frequencies, so that data with unequal classes gets p(x) negatives in the data's
    #: proportion even where chains never leave their block's region.
    class_prior: str = "uniform"
    low: float = -1.0
    high: float = 1.0
    #: Keep the buffer on the training device (faster on GPU; larger checkpoints are unaffected).
    on_device: bool = False

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be at least 1, got {self.size}")
        if not 0.0 <= self.reinit_freq <= 1.0:
            raise ValueError(f"reinit_freq is a probability in [0, 1], got {self.reinit_freq}")
        if self.class_prior not in CLASS_PRIORS:
            raise ValueError(f"class_prior must be one of {', '.join(CLASS_PRIORS)}, got {self.class_prior!r}")
        if self.class_prior != "uniform" and not self.class_conditional:
            raise ValueError(f"class_prior {self.class_prior!r} needs class_conditional: true (one block per class)")


class ReplayBuffer(ChainInit):
    """Persistent chains: starts drawn uniformly with replacement, final states written back."""

    def __init__(
        self,
        shape: tuple[int, ...],
        size: int,
        reinit_freq: float,
        num_classes: int | None = None,
        low: float = -1.0,
        high: float = 1.0,
        device: torch.device | str = "cpu",
        class_prior: Tensor | None = None,
    ) -> None:
        if num_classes is not None and size < num_classes:
            raise ValueError(f"a class-conditional buffer needs size >= num_classes ({num_classes}), got {size}")
        if class_prior is not None and (num_classes is None or class_prior.shape != (num_classes,)):
            raise ValueError(
                f"class_prior needs one probability per class block ({num_classes}), got {tuple(class_prior.shape)}"
            )
        self.noise = UniformNoise(shape, low, high)
        self.reinit_freq = reinit_freq
        self.num_classes = num_classes
        self.block = size // num_classes if num_classes else size
        self.size = self.block * num_classes if num_classes else size
        self.buffer = self.noise.noise(self.size, device)
        #: Probabilities ``[num_classes]`` of an unlabelled draw's block (``None``: uniform).
        self.class_prior = None if class_prior is None else (class_prior / class_prior.sum()).to(self.buffer.device)

    def _slots(self, n: int, y: Tensor | None) -> Tensor:
        device = self.buffer.device
        slots = torch.randint(0, self.block, (n,), device=device)
        if self.num_classes:
            if y is None and self.class_prior is not None:
                y = torch.multinomial(self.class_prior, n, replacement=True) if n else slots.new_zeros(0)
            elif y is None:
                y = torch.randint(0, self.num_classes, (n,), device=device)
            slots = slots + y.to(device).long() * self.block
        return slots

    def start(self, n: int, y: Tensor | None, device: torch.device) -> ChainStart:
        slots = self._slots(n, y)
        stored = self.buffer[slots]
        reinit = torch.rand(n, device=self.buffer.device) < self.reinit_freq
        fresh = self.noise.noise(n, self.buffer.device)
        mask = reinit.view(n, *([1] * (stored.dim() - 1)))
        x = torch.where(mask, fresh, stored).to(device)
        # a 0-dim tensor, not a float: reading it would wait for the device before every sampler call
        return ChainStart(x=x, slots=slots, reinit_fraction=reinit.float().mean() if n else 0.0)

    def finish(self, start: ChainStart, x_final: Tensor) -> None:
        self.buffer[start.slots] = x_final.detach().to(self.buffer.device, self.buffer.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {"buffer": self.buffer}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        buffer = state.get("buffer")
        if buffer is None or tuple(buffer.shape) != tuple(self.buffer.shape):
            got = None if buffer is None else tuple(buffer.shape)
            raise ValueError(f"replay buffer shape mismatch: the recipe expects {tuple(self.buffer.shape)}, got {got}")
        self.buffer = buffer.to(self.buffer.device, self.buffer.dtype).clone()


def build_replay_buffer(params: ReplayBufferParams, context: BuildContext) -> ReplayBuffer:
    """Persistent chains from a replay buffer with a reinit probability (JEM's PCD sampler)."""
    num_classes = None
    if params.class_conditional:
        if not context.num_classes:
            raise ValueError("class_conditional needs the number of classes, which the data set provides")
        num_classes = context.num_classes
    device = context.device if params.on_device else torch.device("cpu")
    prior = data_class_prior(context) if params.class_prior == "data" else None
    return ReplayBuffer(
        _require_shape(context), params.size, params.reinit_freq, num_classes, params.low, params.high, device, prior
    )


def data_class_prior(context: BuildContext) -> Tensor:
    """The training set's class frequencies ``[num_classes]`` (summing to 1), from its ``targets``
    (or the label tensor of a ``TensorDataset``)."""
    data = context.train_data
    targets = getattr(data, "targets", None)
    if targets is None and isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) > 1:
        targets = data.tensors[1]
    if targets is None or not context.num_classes:
        raise ValueError(
            "class_prior: data needs the training set's labels (a data set with a `targets` attribute, as the "
            "built-in ones have, or a TensorDataset of inputs and labels); use class_prior: uniform otherwise"
        )
    counts = torch.bincount(torch.as_tensor(targets, dtype=torch.long).reshape(-1), minlength=context.num_classes)
    if counts.numel() != context.num_classes or int(counts.sum()) == 0:
        raise ValueError(f"class_prior: data found labels outside 0..{context.num_classes - 1} or none at all")
    return counts.double() / counts.sum()


@hookimpl
def jemkit_register_transitions(registry) -> None:
    registry.register("sgld", build_sgld, params=SGLDParams)
    registry.register("langevin", build_langevin, params=LangevinParams)


@hookimpl
def jemkit_register_chain_inits(registry) -> None:
    registry.register("uniform", build_uniform, params=UniformParams)
    registry.register("replay_buffer", build_replay_buffer, params=ReplayBufferParams)
