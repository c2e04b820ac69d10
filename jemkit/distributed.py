"""Data-parallel training across processes (``torchrun``): gloo on CPU, NCCL on CUDA.

``torchrun --nproc_per_node N -m jemkit run RECIPE`` starts N processes; each reads its rank
from the environment. ``train.batch_size`` stays the *global* batch: every rank trains on its
own slice of each global batch, gradients are averaged by DistributedDataParallel, and the
result equals one process on the whole batch (for losses that are means over the batch).
Each rank keeps its own sampler state (replay-buffer shard) and RNG stream; rank 0 alone logs
and writes checkpoints, which hold every rank's sampler state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> DistInfo:
    """Rank, world size and local rank as ``torchrun`` sets them (defaults: one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def initialise(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA devices, gloo otherwise) if not joined yet."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        # Before any collective: NCCL's object collectives (broadcast_object_list, used for the run
        # directory right after joining) run on the current device, which must be this rank's GPU.
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def join(device: torch.device) -> DistInfo:
    """This process's place in the job, joining the process group first when there are several.

    The one place a process sets up data parallelism: ``jemkit run`` calls it before anything
    else touches the run directory, and a :class:`~jemkit.train.Trainer` built without a
    ``DistInfo`` calls it itself. Calling it again is harmless.
    """
    info = from_environment()
    initialise(info, device)
    return info


def shutdown() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_over_ranks(
    values: dict[str, Tensor], info: DistInfo, device: torch.device | None = None
) -> dict[str, Tensor]:
    """Average every 0-dim tensor of ``values`` across ranks (one collective for all).

    The values may live on different devices (a replay buffer's statistics on the CPU, losses on
    the GPU); they are gathered on ``device`` (the training device: CUDA for NCCL).
    """
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    device = device or values[keys[0]].device
    stacked = torch.stack([values[k].detach().float().reshape(()).to(device) for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= info.world_size
    return {k: stacked[i] for i, k in enumerate(keys)}


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (so that all ranks take the same branch)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_states(state: dict[str, Tensor], info: DistInfo, device: torch.device) -> list[dict[str, Tensor]]:
    """Every rank's tensor dict (same keys and shapes on every rank), in rank order."""
    if not info.enabled:
        return [state]
    gathered: list[dict[str, Tensor]] = [{} for _ in range(info.world_size)]
    for key in sorted(state):
        local = state[key].to(device).contiguous()
        parts = [torch.empty_like(local) for _ in range(info.world_size)]
        dist.all_gather(parts, local)
        for rank, part in enumerate(parts):
            gathered[rank][key] = part.cpu()
    return gathered


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run directory name with rank 0's timestamp)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's small picklable object (RNG states), in rank order; in-memory only."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class DataParallelModel:
    """What the loss sees under torchrun: calls go through DistributedDataParallel (gradient
    synchronisation), attribute access (``energy``, ``energy_from_logits``, ``parameters``,
    ``training``) reaches the wrapped :class:`~jemkit.contracts.JointEnergyModel`.

    The sampler's energy calls therefore bypass DDP: they need no gradient synchronisation.
    """

    def __init__(self, ddp: torch.nn.parallel.DistributedDataParallel) -> None:
        self.ddp = ddp
        self.module = ddp.module

    def __call__(self, x: Tensor) -> Tensor:
        return self.ddp(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def local_slice(batch_indices: list[int], info: DistInfo) -> list[int]:
    """This rank's contiguous share of one global batch of indices."""
    if not info.enabled:
        return batch_indices
    per_rank = len(batch_indices) // info.world_size
    return batch_indices[info.rank * per_rank : (info.rank + 1) * per_rank]
