"""CUDA graphs for the sampler's fixed-shape K-step loop (``performance.cuda_graphs``).

Every sampler call of a training run launches the same kernels: K forward and input-gradient
passes over ``n`` chains of one shape. Only the values change. The loop is captured once per
shape as a CUDA graph and replayed: one launch per call instead of thousands, and no Python
between the steps. The cost is one extra, discarded loop per captured shape (the warm-up that
CUDA graph capture needs) and a private memory pool that holds one loop's intermediates.

What a replay may rely on, and how this module keeps it true:

* Inputs and outputs live in fixed ("static") tensors. A call copies its chains and labels into
  the static inputs, replays, and returns clones of the static outputs, so results of earlier
  calls are never overwritten.
* The graph reads the model's weights from the addresses they had at capture. Optimiser steps and
  ``load_state_dict`` update weights in place, which a replay sees. Anything that moves a weight
  (``model.to(...)``, assigning a new tensor) is detected from the parameter and buffer addresses
  and triggers a fresh capture.
* Random numbers come from the CUDA generator's graph-safe Philox offsets: every replay draws new
  noise, but not the numbers an eager run with the same seed would draw.
* Autocast's weight cache would hand the graph casts that are freed after capture, so capture
  and warm-up run with the cache off.
* Python numbers a transition uses (step size, noise) are baked into the graph at capture; code
  that changes them during a run must call ``sampler.graph_cache.clear()``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor, nn


@dataclass
class ChainLoopOutput:
    """What one K-step loop returns: final states and per-call diagnostics (0-dim tensors)."""

    x: Tensor
    #: Mean energy at the input of the first step; ``None`` when K = 0.
    first_energy: Tensor | None = None
    #: Mean energy at the input of the last step; ``None`` when K = 0.
    last_energy: Tensor | None = None
    #: Mean over steps of the mean raw ``dE/dx`` norm; ``None`` when K = 0.
    grad_norm: Tensor | None = None
    #: Mean Metropolis acceptance rate; ``None`` for unadjusted transitions.
    accept_rate: Tensor | None = None
    #: First step whose output was not finite (chains, energies or gradient norms) as a 0-dim
    #: integer tensor: ``k`` in ``1..K``, ``0`` when the chains were not finite before the first
    #: step, ``-1`` when all were finite. Computed once after the loop; ``None`` when K = 0.
    nonfinite_step: Tensor | None = None

    def tensors(self) -> list[Tensor | None]:
        """The fields in declaration order."""
        return [getattr(self, f.name) for f in fields(self)]

    def cloned(self) -> ChainLoopOutput:
        """A copy whose tensors own their memory (static graph outputs are overwritten by replays)."""
        return ChainLoopOutput(*(None if t is None else t.clone() for t in self.tensors()))


#: The captured computation: reads the static inputs, returns fresh output tensors.
LoopBody = Callable[[], ChainLoopOutput]


class Replayable(Protocol):
    """A captured graph: ``replay()`` reruns the captured kernels on the same memory."""

    def replay(self) -> None: ...


#: Captures a loop body; returns the graph and the body's (static) outputs.
CaptureFn = Callable[[LoopBody], tuple[Replayable, ChainLoopOutput]]


def capture_cuda_graph(body: LoopBody) -> tuple[torch.cuda.CUDAGraph, ChainLoopOutput]:
    """Warm up ``body`` once on a side stream, then capture it as a CUDA graph (autocast cache off)."""
    dtype = torch.get_autocast_dtype("cuda")
    enabled = torch.is_autocast_enabled("cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
        body()  # lazy initialisation (cuBLAS/cuDNN handles, autograd device threads) outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the DataLoader's pin-memory thread keeps calling CUDA during the capture; in the
    # default ("global") mode its host allocations would abort the capture.
    with (
        torch.cuda.graph(graph, capture_error_mode="thread_local"),
        torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False),
    ):
        outputs = body()
    return graph, outputs


def storage_addresses(module: nn.Module) -> tuple[int, ...]:
    """Addresses of every parameter and buffer: a change means a captured graph reads stale memory."""
    return tuple(t.data_ptr() for t in (*module.parameters(), *module.buffers()))


class GraphedLoop:
    """One captured loop with its static inputs and outputs."""

    def __init__(self, x: Tensor, y: Tensor | None, make_body: Callable[[Tensor, Tensor | None], LoopBody],
                 capture: CaptureFn) -> None:
        self.static_x = torch.empty_like(x)
        self.static_y = None if y is None else torch.empty_like(y)
        self._fill(x, y)
        self.graph, self.outputs = capture(make_body(self.static_x, self.static_y))

    def _fill(self, x: Tensor, y: Tensor | None) -> None:
        self.static_x.copy_(x)
        if self.static_y is not None and y is not None:
            self.static_y.copy_(y)

    def __call__(self, x: Tensor, y: Tensor | None) -> ChainLoopOutput:
        """Run the captured loop on new chains and labels; the result owns its memory."""
        self._fill(x, y)
        self.graph.replay()
        return self.outputs.cloned()


class ChainGraphCache:
    """Captured loops of one sampler, keyed by everything that changes the kernels launched.

    The key is built by the caller (shapes, dtypes, memory format, K, model mode, frozen weights,
    autocast); the cache checks the addresses of the model's weights and buffers and drops every
    graph when they change. A loop is captured the second time its key comes up: a one-off call (a
    sample grid with extra steps) runs eagerly instead of paying for a warm-up, a capture and a
    graph memory pool it would never reuse.
    """

    def __init__(self, capture: CaptureFn = capture_cuda_graph) -> None:
        self.capture = capture
        self.graphs: dict[Hashable, GraphedLoop] = {}
        self._seen: set[Hashable] = set()
        self._model_state: tuple[int, ...] | None = None
        #: Number of captures so far (each costs one warm-up loop and the capture itself).
        self.captures = 0

    def run(
        self,
        key: Hashable,
        model: nn.Module,
        x: Tensor,
        y: Tensor | None,
        make_body: Callable[[Tensor, Tensor | None], LoopBody],
    ) -> ChainLoopOutput:
        """Run the loop for ``key`` on ``x`` and ``y``: eagerly the first time, then from its graph."""
        # Addresses, not the module object: a DDP facade and the module it wraps share every weight.
        state = storage_addresses(model)
        if state != self._model_state:
            self.graphs.clear()
            self._model_state = state
        graphed = self.graphs.get(key)
        if graphed is None:
            if key not in self._seen:
                self._seen.add(key)
                return make_body(x, y)()
            graphed = GraphedLoop(x, y, make_body, self.capture)
            self.graphs[key] = graphed
            self.captures += 1
        return graphed(x, y)

    def clear(self) -> None:
        """Forget every captured graph (their memory pools are released with them)."""
        self.graphs.clear()
        self._seen.clear()
        self._model_state = None


def loop_key(x: Tensor, y: Tensor | None, steps: int, *settings: Hashable) -> tuple[Hashable, ...]:
    """Everything about a call that changes which kernels the loop launches."""
    autocast = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y_sig = None if y is None else (tuple(y.shape), y.dtype)
    return (tuple(x.shape), x.dtype, str(x.device), channels_last, y_sig, steps, autocast, *settings)
