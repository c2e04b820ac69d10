"""Speed levers that do not change the maths: memory format, mixed precision, compilation.

Chosen in the recipe's ``performance:`` section; each is measured on and off by
``benchmarks/step_cost.py --levers``. Levers that live with their component stay there:
``sampler.freeze_weights`` (no weight gradients while sampling), ``loss.fuse_forward`` (data and
negatives in one forward pass; exact without batch norm), ``sampler.init.on_device`` (replay
buffer on the GPU). ``cuda_graphs`` is applied by the sampler (:mod:`jemkit.chain_graphs`).
Pinned, non-blocking host-to-device copies are always on for CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PerformanceParams:
    """Settings of the ``performance:`` recipe section (all off by default)."""

    #: Store 4-D weights and inputs in NHWC (``torch.channels_last``); faster convolutions on GPU.
    channels_last: bool = False
    #: Mixed precision for training forward passes and sampling: ``none``, ``bf16`` or ``fp16``.
    autocast: str = "none"
    #: ``torch.compile`` the backbone (first iterations are slow while it compiles).
    compile: bool = False
    #: ``torch.compile`` mode: ``default``, ``reduce-overhead`` (CUDA graphs) or ``max-autotune``.
    compile_mode: str = "default"
    #: Capture the sampler's K-step loop as one CUDA graph per chain shape and replay it (CUDA
    #: only, graph-safe transitions: sgld, langevin, proximal_sgld; eager on CPU).
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.autocast!r}")
        if self.compile_mode not in ("default", "reduce-overhead", "max-autotune"):
            raise ValueError(
                f"compile_mode must be default, reduce-overhead or max-autotune, got {self.compile_mode!r}"
            )
        if self.cuda_graphs and self.compile and self.compile_mode == "reduce-overhead":
            raise ValueError(
                "cuda_graphs and compile_mode=reduce-overhead both capture CUDA graphs and cannot nest; "
                "choose one (cuda_graphs captures the whole sampler loop, reduce-overhead each backbone call)"
            )


def prepare_model(model: nn.Module, params: PerformanceParams) -> nn.Module:
    """Apply the model-side levers in place (memory format, compilation); returns ``model``."""
    if params.channels_last:
        model.to(memory_format=torch.channels_last)
    if params.compile:
        backbone = getattr(model, "backbone", model)
        backbone.compile(mode=params.compile_mode)
    return model


def prepare_input(x: Tensor, params: PerformanceParams) -> Tensor:
    """An input batch in the memory format the model expects."""
    if params.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@contextlib.contextmanager
def autocast(device: torch.device, params: PerformanceParams) -> Iterator[None]:
    """Mixed-precision region for training forward passes (no-op when ``autocast: none``)."""
    dtype = AUTOCAST_DTYPES[params.autocast]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
