"""The inputs every evaluated run sees, drawn once: the test split, the OOD sets and the reference
features of real images for FID, KID, diversity and precision/recall (with the FID and KID of
other real images against them: the floor a perfect generator would reach).

Each draw is seeded with the evaluation's ``seed`` first, so the same settings give the same
inputs whatever else ran before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from jemkit.rng import seed_everything
from jemkit.contracts import DataSplits, FeatureExtractor
from jemkit.evaluation.components import EvalComponents
from jemkit.evaluation.features import extract
from jemkit.evaluation.frechet import frechet_distance, gaussian_stats
from jemkit.evaluation.kid import kernel_inception_distance
from jemkit.evaluation.metric_names import metric_label
from jemkit.evaluation.progress import Steps
from jemkit.evaluation.settings import EvalSettings


@dataclass
class Inputs:
    """What every evaluated run sees: the same tensors, drawn once."""

    x_test: Tensor
    y_test: Tensor
    ood: dict[str, Tensor] = field(default_factory=dict)
    ood_params: dict[str, Any] = field(default_factory=dict)
    extractor: FeatureExtractor | None = None
    extractor_params: dict[str, Any] = field(default_factory=dict)
    #: Mean ``[D]`` and covariance ``[D, D]`` of the reference features (FID).
    reference: tuple[Tensor, Tensor] | None = None
    #: The reference images' features ``[M, D]`` and labels ``[M]`` (KID, diversity, precision/recall).
    reference_features: Tensor | None = None
    reference_labels: Tensor | None = None
    reference_info: str = ""
    real_fid: float | None = None
    #: KID of the real images against the reference: ``{"mean", "std"}``.
    real_kid: dict[str, float] | None = None
    real_info: str = ""


def materialise(dataset: Dataset, limit: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """Inputs and labels of ``dataset`` as tensors: all items, or a seeded random subset of ``limit`` (index order)."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None and limit < n:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
    else:
        index = list(range(n))
    xs, ys = [], []
    for i in index:
        x, y = dataset[i][:2]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def prepare_inputs(
    settings: EvalSettings,
    data: DataSplits,
    data_name: str,
    components: EvalComponents,
    steps: Steps,
    device: torch.device,
) -> Inputs:
    """The test inputs (at most ``max_test``), each OOD set's inputs (at most ``ood_n``) and, with a
    feature extractor, the reference statistics for FID."""
    seed_everything(settings.seed)
    x_test, y_test = materialise(data.test, settings.max_test, settings.seed)
    inputs = Inputs(
        x_test=x_test,
        y_test=y_test,
        ood_params=components.ood_params,
        extractor=components.extractor,
        extractor_params=components.extractor_params,
    )
    for name, dataset in components.ood_sets.items():
        seed_everything(settings.seed)
        inputs.ood[name] = materialise(dataset, settings.ood_n, settings.seed)[0]
    if inputs.extractor is not None:
        add_reference(inputs, settings, data, data_name, steps, device)
    return inputs


def add_reference(
    inputs: Inputs, settings: EvalSettings, data: DataSplits, data_name: str, steps: Steps, device: torch.device
) -> None:
    """Fill ``inputs.reference`` (mean and covariance of the reference split's features) and the FID of
    real images of the other split against it (``--fid-reference test``: the test inputs as reference,
    ``n_samples`` training images as the real samples; ``train``: the whole plain training split)."""
    extractor = inputs.extractor
    assert extractor is not None
    train_split = data.train_plain or data.train
    seed_everything(settings.seed)
    if settings.fid_reference == "test":
        reference_x, reference_y, other_name = inputs.x_test, inputs.y_test, "train"
        real_x = materialise(train_split, settings.n_samples, settings.seed)[0]
    else:
        reference_x, reference_y = materialise(train_split, None, settings.seed)
        other_name, real_x = "test", inputs.x_test
    with steps.task("reference features", len(reference_x) + len(real_x)) as advance:
        ref_features = extract(extractor, reference_x, settings.batch_size, device)[0]
        advance(len(reference_x))
        real_features = extract(extractor, real_x, settings.batch_size, device)[0]
        advance(len(real_x))
    inputs.reference = gaussian_stats(ref_features)
    inputs.reference_features, inputs.reference_labels = ref_features, reference_y
    inputs.reference_info = f"{len(reference_x)} images of the {data_name!r} {settings.fid_reference} split"
    inputs.real_fid = frechet_distance(*gaussian_stats(real_features), *inputs.reference)
    kid = kernel_inception_distance(
        real_features.to(device), ref_features, settings.kid_subsets, settings.kid_subset_size, settings.seed
    )
    inputs.real_kid = {"mean": kid[0], "std": kid[1]}
    fid, kid_name = (metric_label(settings.feature_extractor, k) for k in ("fid", "kid"))
    inputs.real_info = f"{fid} and {kid_name} of {len(real_x)} real {other_name} images against the same reference"
