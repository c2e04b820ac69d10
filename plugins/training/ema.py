"""Exponential moving average (EMA) of the model's weights, kept through checkpoints.

Off unless the recipe has a top-level ``ema:`` section::

    ema: {decay: 0.999, use_for_eval: true}

After every optimiser step each floating-point entry of the model's state dict (weights, and
batch-norm statistics alike) is averaged as ``ema = decay * ema + (1 - decay) * current``; other
entries (counters) are copied. The average starts from the weights the run starts with. It
travels in every checkpoint (``jemkit_save_state``) and comes back on resume and rollback
(``jemkit_load_state``), so a resumed run ends with the same average, bit for bit on the CPU, as
an uninterrupted one. With ``use_for_eval`` ``jemkit eval``, ``jemkit sample`` and the Python API
load the average instead of the trained weights (``jemkit_inference_weights``); the accuracy the
training loop itself logs is that of the trained weights.

Built only on the public plugin surface (:class:`jemkit.contracts.RunView` and the hooks).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from jemkit import hookimpl
from jemkit.config import build_params
from jemkit.contracts import RunView
from jemkit.errors import CheckpointError, RecipeError

#: The recipe's top-level section.
SECTION = "ema"


@dataclass
class EMAParams:
    """Settings of the ``ema:`` recipe section."""

    #: Weight of the old average in each update, in (0, 1): ``ema = decay * ema + (1 - decay) * weights``.
    decay: float = 0.999
    #: Load the averaged weights in ``jemkit eval``, ``jemkit sample`` and the Python API.
    use_for_eval: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must lie strictly between 0 and 1, got {self.decay}")


@dataclass
class WeightAverage:
    """The running average of one model's state dict."""

    params: EMAParams
    #: State-dict name -> averaged tensor (same shape, dtype and device as the model's entry).
    averages: dict[str, Tensor] = field(default_factory=dict)
    #: Optimiser steps averaged so far.
    updates: int = 0

    @classmethod
    def start(cls, params: EMAParams, model: nn.Module) -> WeightAverage:
        """An average equal to ``model``'s current weights."""
        return cls(params, {k: v.detach().clone() for k, v in model.state_dict().items()})

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: move every floating-point entry ``1 - decay`` of the way to the model's."""
        weight = 1.0 - self.params.decay
        for name, value in model.state_dict().items():
            average = self.averages[name]
            if average.is_floating_point():
                average.lerp_(value.detach(), weight)
            else:
                average.copy_(value)
        self.updates += 1

    def state(self) -> dict[str, Any]:
        return {"averages": dict(self.averages), "updates": self.updates, "decay": self.params.decay}


#: The average of each model being trained in this process (a run's model is its key).
_AVERAGES: weakref.WeakKeyDictionary[nn.Module, WeightAverage] = weakref.WeakKeyDictionary()


def ema_params(config: DictConfig | None) -> EMAParams | None:
    """The recipe's ``ema:`` settings, validated, or ``None`` when it has no such section (EMA off)."""
    node = config.get(SECTION) if isinstance(config, DictConfig) else None
    if node is None:
        return None
    if not isinstance(node, DictConfig):
        raise RecipeError(f"recipe: '{SECTION}' must be a mapping such as {{decay: 0.999, use_for_eval: true}}, got {node!r}.")
    return build_params(EMAParams, node, SECTION, what="the weight average (ema)")


@hookimpl
def jemkit_run_start(run: RunView) -> None:
    """Start the average from the run's weights (a resumed run keeps the one its checkpoint restored)."""
    params = ema_params(getattr(run, "config", None))
    model = getattr(run, "model", None)
    if model is None:  # not a training run's view
        return
    if params is None:
        _AVERAGES.pop(model, None)
    elif model not in _AVERAGES:
        _AVERAGES[model] = WeightAverage.start(params, model)


@hookimpl
def jemkit_step_end(run: RunView, step: int) -> None:
    """Average the weights the optimiser step produced."""
    average = _AVERAGES.get(run.model)
    if average is not None:
        average.update(run.model)


@hookimpl
def jemkit_save_state(run: RunView) -> Mapping[str, Any] | None:
    """The average and its update count, or nothing when EMA is off."""
    average = _AVERAGES.get(run.model)
    return None if average is None else average.state()


@hookimpl
def jemkit_load_state(run: RunView, state: Mapping[str, Any]) -> None:
    """Restore the average a checkpoint holds; start afresh from the restored weights when it holds none."""
    params = ema_params(run.config)
    if params is None:
        _AVERAGES.pop(run.model, None)
        return
    saved = state.get("averages")
    if not saved:
        _AVERAGES[run.model] = WeightAverage.start(params, run.model)
        return
    expected = run.model.state_dict()
    if set(saved) != set(expected):
        missing = sorted(set(expected) - set(saved))[:3]
        raise CheckpointError(
            f"The checkpoint's weight average does not fit the model (missing {missing}, or extra entries); "
            "resume with the recipe the run was written with."
        )
    averages = {k: saved[k].to(device=v.device, dtype=v.dtype) for k, v in expected.items()}
    _AVERAGES[run.model] = WeightAverage(params, averages, int(state.get("updates", 0)))


@hookimpl
def jemkit_inference_weights(config: DictConfig, state: Mapping[str, Any]) -> Mapping[str, Tensor] | None:
    """The averaged weights when the recipe asks for them (``ema.use_for_eval``) and the checkpoint has them."""
    params = ema_params(config)
    if params is None or not params.use_for_eval:
        return None
    averages = state.get("averages")
    return dict(averages) if averages else None
