"""Speed levers that do not change the maths: memory format, mixed precision, compilation.

Chosen in the recipe's ``performance:`` section; each is measured on and off by
``benchmarks/step_cost.py --levers``. ``autocast: auto`` and ``channels_last: auto`` (the shipped
recipes) are settled before the first training step by timing each candidate on the first batch
(:mod:`jemkit.precision`); until then ``auto`` means fp32 in the NCHW layout. Levers that live with
their component stay there: ``sampler.freeze_weights`` (no weight gradients while sampling),
``loss.fuse_forward`` (data and negatives in one forward pass; exact without batch norm),
``sampler.init.on_device`` (replay buffer on the GPU). ``cuda_graphs`` is applied by the sampler
(:mod:`jemkit.chain_graphs`). Pinned, non-blocking host-to-device copies are always on for CUDA.

Under mixed precision only the network's passes run in the low-precision type: the model's
logits come back in fp32 (:func:`apply_precision`), so energies, losses, the sampler's update and
noise, the replay buffer and checkpoints stay fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The value that lets :mod:`jemkit.precision` choose a setting by timing.
AUTO = "auto"


def _layout_setting(value: Any) -> bool | str:
    """``channels_last`` as ``True``, ``False`` or ``"auto"`` (YAML strings accepted)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", AUTO):
        text = value.strip().lower()
        return AUTO if text == AUTO else text == "true"
    raise ValueError(f"channels_last must be true, false or auto, got {value!r}")


@dataclass
class PerformanceParams:
    """Settings of the ``performance:`` recipe section (all off by default)."""

    #: Store 4-D weights and inputs in NHWC (``torch.channels_last``): ``true``, ``false`` or
    #: ``auto`` (timed against NCHW on the first batch, see :mod:`jemkit.precision`).
    channels_last: Any = False
    #: Mixed precision for the network's passes in training and sampling: ``none``, ``bf16``,
    #: ``fp16`` or ``auto`` (bf16 where the device supports it, it agrees with fp32 on the first
    #: batch and it is faster there; else none).
    autocast: str = "none"
    #: ``torch.compile`` the backbone (first iterations are slow while it compiles).
    compile: bool = False
    #: ``torch.compile`` mode: ``default``, ``reduce-overhead`` (CUDA graphs) or ``max-autotune``.
    compile_mode: str = "default"
    #: Capture the sampler's K-step loop as one CUDA graph per chain shape and replay it (CUDA
    #: only, graph-safe transitions: sgld, langevin, proximal_sgld; eager on CPU).
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        self.channels_last = _layout_setting(self.channels_last)
        if self.autocast not in (*AUTOCAST_DTYPES, AUTO):
            raise ValueError(
                f"autocast must be one of {', '.join((*AUTOCAST_DTYPES, AUTO))}, got {self.autocast!r}"
            )
        if self.compile_mode not in ("default", "reduce-overhead", "max-autotune"):
            raise ValueError(
                f"compile_mode must be default, reduce-overhead or max-autotune, got {self.compile_mode!r}"
            )
        if self.cuda_graphs and self.compile and self.compile_mode == "reduce-overhead":
            raise ValueError(
                "cuda_graphs and compile_mode=reduce-overhead both capture CUDA graphs and cannot nest; "
                "choose one (cuda_graphs captures the whole sampler loop, reduce-overhead each backbone call)"
            )

    @property
    def settled(self) -> bool:
        """Whether neither precision setting is ``auto`` any more."""
        return self.autocast != AUTO and self.channels_last != AUTO

    def with_precision(self, autocast: str, channels_last: bool) -> PerformanceParams:
        """A copy with the precision settings replaced (e.g. by the ones ``auto`` chose)."""
        return dataclasses.replace(self, autocast=autocast, channels_last=channels_last)


def prepare_model(model: nn.Module, params: PerformanceParams) -> nn.Module:
    """Apply the model-side levers in place (memory format, fp32 outputs, compilation); returns ``model``.

    ``auto`` settings leave the model as built (fp32 NCHW) until :func:`apply_precision`.
    """
    apply_precision(model, params)
    if params.compile:
        backbone = getattr(model, "backbone", model)
        backbone.compile(mode=params.compile_mode)
    return model


def apply_precision(model: nn.Module, params: PerformanceParams) -> nn.Module:
    """Put ``model`` in the memory format of ``params`` and, under mixed precision, make its outputs fp32.

    With ``channels_last: true`` the 4-D weights become NHWC (a no-op for other weights). With an
    autocast type the model's outputs (logits) are returned in fp32: energies computed from them
    (``-logsumexp``), losses and everything the sampler does with them stay fp32, and only the
    network's own passes run in the low-precision type. Idempotent.
    """
    if params.channels_last is True:
        model.to(memory_format=torch.channels_last)
    if AUTOCAST_DTYPES.get(params.autocast) is not None and not hasattr(model, "_jemkit_fp32_outputs"):
        model._jemkit_fp32_outputs = model.register_forward_hook(_outputs_in_fp32)
    return model


def _outputs_in_fp32(module: nn.Module, inputs: Any, output: Any) -> Any:
    """Forward hook: a low-precision floating-point output tensor is returned as fp32."""
    if isinstance(output, Tensor) and output.is_floating_point() and output.dtype != torch.float32:
        return output.float()
    return output


def prepare_input(x: Tensor, params: PerformanceParams) -> Tensor:
    """An input batch in the memory format the model expects."""
    if params.channels_last is True and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@contextlib.contextmanager
def autocast(device: torch.device, params: PerformanceParams) -> Iterator[None]:
    """Mixed-precision region for the network's passes (no-op for ``none``, and for an unsettled ``auto``)."""
    dtype = AUTOCAST_DTYPES.get(params.autocast)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
