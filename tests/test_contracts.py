"""Contract tests: every registered component, built-in or installed, is built and run on a batch.

A new component is enrolled automatically; give it small parameters in ``SMALL`` if its
defaults are too heavy for a CPU test. The checks themselves are :mod:`jemkit.testing`, the
same ones a third-party plugin runs on its own components.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jemkit.plugin_manager import load_plugins
from jemkit.testing import (
    check_backbone,
    check_chain_init,
    check_data,
    check_feature_extractor,
    check_head,
    check_importer,
    check_loss,
    check_ood,
    check_optimizer,
    check_schedule,
    check_transition,
    tiny_context,
)

from fakedata import write_fake_cifar10, write_fake_cifar100, write_fake_svhn

PLUGINS = load_plugins()

#: Parameters that keep heavy defaults small enough for a CPU test.
SMALL: dict[tuple[str, str], dict] = {
    ("backbone", "wrn"): {"depth": 10, "widen_factor": 1},
    ("chain_init", "replay_buffer"): {"size": 100},
    ("chain_init", "informative_buffer"): {"size": 100},
    ("ood", "uniform_noise"): {"size": 12},
    ("ood", "constant"): {"size": 12},
    ("ood", "interpolations"): {"size": 12},
    ("ood", "sklearn_patches"): {"size": 12},
    ("ood", "celeba_folder"): {"max_images": 3},
    ("feature_extractor", "digits_classifier"): {"epochs": 1},
    ("feature_extractor", "inception"): {"resize": 75},
}


def _components(kind: str):
    return [pytest.param(c, id=c.name) for c in PLUGINS.registries[kind]]


def _params(component, extra: dict | None = None) -> dict:
    """The recipe values a component is checked with (validated by the check like a recipe section)."""
    return {**SMALL.get((component.kind, component.name), {}), **(extra or {})}


@pytest.mark.parametrize("component", _components("backbone"))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)], ids=["1x8x8", "3x16x16"])
def test_backbone_contract(component, shape):
    check_backbone(component, _params(component), input_shapes=[shape])


@pytest.mark.parametrize("component", _components("head"))
def test_head_contract(component):
    check_head(component, _params(component), feature_dim=16, num_classes=5)


@pytest.mark.parametrize("component", _components("chain_init"))
def test_chain_init_contract(component):
    check_chain_init(component, _params(component), context=tiny_context())


@pytest.mark.parametrize("component", _components("transition"))
def test_transition_contract(component):
    """From far away, 20 steps on E(x) = |x - 0.3|^2 / 2 lower the mean energy and keep the shape."""
    check_transition(component, _params(component))


@pytest.mark.parametrize("component", _components("loss"))
def test_loss_contract(component):
    check_loss(component, _params(component))


def _data_params(component, tmp_path: Path) -> dict:
    writers = {"cifar10": write_fake_cifar10, "cifar100": write_fake_cifar100, "svhn": write_fake_svhn}
    if component.name in writers:
        writers[component.name](tmp_path)
        return {"root": str(tmp_path), "download": False}
    if (component.kind, component.name) == ("ood", "celeba_folder"):
        from PIL import Image

        folder = tmp_path / "celeba"
        folder.mkdir(parents=True)
        for i in range(4):  # CelebA-shaped (218x178) RGB images
            Image.fromarray(np.full((218, 178, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i:06d}.png")
        return {"root": str(folder)}
    return {}


@pytest.mark.parametrize("component", _components("data"))
def test_data_contract(component, tmp_path):
    check_data(component, _params(component, _data_params(component, tmp_path)))


@pytest.mark.parametrize("component", _components("optimizer"))
def test_optimizer_contract(component):
    check_optimizer(component, _params(component))


@pytest.mark.parametrize("component", _components("schedule"))
def test_schedule_contract(component):
    check_schedule(component, _params(component))


#: Input shapes an OOD set or feature extractor is tried with: digits-sized and CIFAR-sized.
EVAL_SHAPES = [(1, 8, 8), (3, 32, 32)]


@pytest.mark.parametrize("component", _components("ood"))
def test_ood_contract(component, tmp_path):
    """Built for each input shape it supports (``ValueError`` otherwise), items have that shape and lie in [-1, 1]."""
    check_ood(component, _params(component, _data_params(component, tmp_path)), shapes=EVAL_SHAPES)


def _inception_weights(path: Path) -> Path:
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    state = inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("component", _components("feature_extractor"))
def test_feature_extractor_contract(component, tmp_path, monkeypatch):
    monkeypatch.setenv("JEMKIT_CACHE", str(tmp_path / "cache"))
    extra = {}
    if component.name == "inception":
        extra = {"weights": str(_inception_weights(tmp_path / "inception.safetensors"))}
    check_feature_extractor(component, _params(component, extra), shapes=EVAL_SHAPES)


@pytest.mark.parametrize("component", _components("importer"))
def test_importer_contract(component):
    check_importer(component, _params(component))
