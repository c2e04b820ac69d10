"""Samples from a JEM and their quality: FID, Inception Score and class-conditional accuracy.

Fresh chains start from ``U(-1, 1)`` and run the run's own transition for ``steps`` steps on
``E(x)`` (unconditional) or ``E(x, y) = -f(x)[y]`` (class-conditional); replay-buffer samples are
the stored chain states of a persistent sampler. Quality is measured with a
:class:`~jemkit.contracts.FeatureExtractor` against the features of real images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from jemkit.contracts import ChainInit, JointEnergyModel, Transition
from jemkit.evaluation.frechet import frechet_distance, gaussian_stats
from jemkit.evaluation.inception_score import inception_score_from_logits
from jemkit.sampler import Sampler


def fresh_samples(
    model: JointEnergyModel,
    init: ChainInit,
    transition: Transition,
    steps: int,
    mode: str,
    n: int,
    y: Tensor | None,
    batch_size: int,
    device: torch.device,
    advance: Callable[[int], None] = lambda k: None,
    cuda_graphs: bool = False,
) -> Tensor:
    """``n`` samples ``[n, ...]`` (CPU) from chains started by ``init``; class-conditional given ``y`` ``[n]``.

    With ``cuda_graphs`` (the run's ``performance.cuda_graphs``) the full batches replay one
    captured K-step loop on CUDA devices.
    """
    sampler = Sampler(init, transition, steps, model_mode=mode, cuda_graphs=cuda_graphs)
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        labels = None if y is None else y[start : start + count]
        out.append(sampler.sample(model, count, y=labels, steps=steps, device=device, persist=False).cpu())
        advance(count)
    return torch.cat(out)


def buffer_contents(sampler: Sampler) -> tuple[Tensor, Tensor | None] | None:
    """The replay buffer ``[M, ...]`` of a persistent sampler and its slot labels, or ``None`` without a buffer.

    Labels exist for class-conditional buffers that expose ``num_classes`` and ``block`` (slots
    ``k * block ... (k + 1) * block - 1`` hold class ``k``, as the built-in ``replay_buffer`` does).
    """
    buffer = sampler.state_dict().get("buffer")
    if not isinstance(buffer, Tensor) or buffer.dim() < 2:
        return None
    num_classes, block = getattr(sampler.init, "num_classes", None), getattr(sampler.init, "block", None)
    labels = None
    if isinstance(num_classes, int) and isinstance(block, int) and num_classes * block == len(buffer):
        labels = torch.arange(num_classes).repeat_interleave(block)
    return buffer.detach().cpu(), labels


def sample_quality(
    features: Tensor,
    logits: Tensor,
    reference: tuple[Tensor, Tensor],
    is_splits: int,
    y: Tensor | None = None,
) -> dict[str, Any]:
    """FID against ``reference`` (mean, covariance), IS (mean, std over splits), and when labels ``y``
    are given the class-conditional accuracy: the fraction of samples the extractor labels ``y``."""
    result: dict[str, Any] = {
        "fid": frechet_distance(*gaussian_stats(features), *reference),
        "inception_score": dict(zip(("mean", "std"), inception_score_from_logits(logits, is_splits))),
    }
    if y is not None:
        predicted = logits.argmax(1)
        hits = predicted == y
        result["class_accuracy"] = float(hits.double().mean())
        result["per_class_accuracy"] = [
            float(hits[y == k].double().mean()) if (y == k).any() else None for k in range(int(y.max()) + 1)
        ]
    return result


def grid_order(y: Tensor, per_class: int) -> Tensor:
    """Indices of the first ``per_class`` samples of each class, class by class (one grid row per class)."""
    rows = [torch.nonzero(y == k).flatten()[:per_class] for k in range(int(y.max()) + 1)]
    return torch.cat(rows)
