"""Every paper value of the CIFAR recipes, pinned against ../shared/JEM_REFERENCE.md.

The README says `recipes/jem_cifar10.yaml` is the JEM paper's setting line by line, and the JEM++
and SADA-JEM recipes carry their papers' settings; a changed value is a changed claim, so each is
a row here (the source column says where the number comes from).
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import RECIPES

# (dotted key, value, source)
JEM_PAPER = [
    ("data.name", "cifar10", "CIFAR-10"),
    ("data.augment", True, "random crop 32 with 4-px reflect padding, horizontal flip"),
    ("data.noise_std", 0.03, "Gaussian noise sigma 0.03 on train and test inputs"),
    ("data.val_size", 5000, "5,000 images held out of the training set"),
    ("seed", 1, "seeds: torch 1"),
    ("model.backbone.name", "wrn", "Wide-ResNet"),
    ("model.backbone.depth", 28, "WRN-28-10"),
    ("model.backbone.widen_factor", 10, "WRN-28-10"),
    ("model.backbone.norm", "none", "no normalisation"),
    ("model.backbone.dropout", 0.0, "dropout 0"),
    ("model.backbone.leak", 0.2, "LeakyReLU(0.2)"),
    ("model.head.name", "linear", "linear 640 -> C logits"),
    ("optimizer.name", "adam", "Adam"),
    ("optimizer.lr", 1.0e-4, "lr 1e-4"),
    ("optimizer.weight_decay", 0.0, "no weight decay"),
    ("schedule.warmup_steps", 1000, "linear warm-up over 1000 iterations"),
    ("schedule.milestones", [160, 180], "lr x 0.3 at epochs 160 and 180"),
    ("schedule.gamma", 0.3, "lr x 0.3 at epochs 160 and 180"),
    ("train.epochs", 200, "200 epochs"),
    ("train.batch_size", 64, "batch 64"),
    ("loss.name", "jem", "the JEM hybrid objective"),
    ("loss.pyx", 1.0, "p(y|x) weight 1.0"),
    ("loss.px", 1.0, "p(x) weight 1.0"),
    ("loss.pxy", 0.0, "p(x,y) weight 0.0"),
    ("sampler.steps", 20, "20 SGLD steps per iteration"),
    ("sampler.model_mode", "eval", "model in eval mode while sampling"),
    ("sampler.transition.name", "sgld", "SGLD"),
    ("sampler.transition.step_size", 1.0, "step size 1.0 on the gradient"),
    ("sampler.transition.noise", 0.01, "noise std 0.01, set independently"),
    ("sampler.init.name", "replay_buffer", "persistent replay buffer"),
    ("sampler.init.size", 10000, "10,000 samples"),
    ("sampler.init.reinit_freq", 0.05, "re-initialised with probability 0.05"),
    ("guard.max_abs_loss", 1.0e8, "the reference code aborts when abs(loss) > 1e8"),
]

# JEM++ (Yang & Ji, ICCV 2021) and SADA-JEM (Yang, Su, Ji, CVPR 2023): what they change.
DESCENDANTS_COMMON = [
    ("model.backbone.norm", "batch", "batch norm on"),
    ("model.backbone.depth", 28, "WRN-28-10"),
    ("model.backbone.widen_factor", 10, "WRN-28-10"),
    ("sampler.model_mode", "train", "model in train mode while sampling"),
    ("sampler.init.name", "informative_buffer", "informative initialisation, per-class Gaussians"),
    ("sampler.init.eps", 1.0e-4, "N(mu_c, Sigma_c + 1e-4 I)"),
    ("sampler.transition.name", "proximal_sgld", "proximal SGLD"),
    ("sampler.transition.grad_clamp", 1.0, "gradient clamped to [-1, 1]"),
    ("sampler.transition.low", -1.0, "samples clamped to [-1, 1]"),
    ("sampler.transition.high", 1.0, "samples clamped to [-1, 1]"),
    ("sampler.transition.noise", 0.0, "no noise"),
    ("train.epochs", 150, "150 epochs"),
    ("schedule.milestones", [50, 100, 125], "decay at 50/100/125"),
    ("data.noise_std", 0.03, "JEM's input noise"),
]
JEMPP_PAPER = DESCENDANTS_COMMON + [
    ("sampler.steps", 10, "10 outer steps"),
    ("optimizer.name", "sgd", "SGD"),
    ("optimizer.lr", 0.1, "lr 0.1"),
    ("optimizer.weight_decay", 4.0e-4, "wd 4e-4"),
]
SADAJEM_PAPER = DESCENDANTS_COMMON + [
    ("sampler.steps", 5, "5 SGLD steps"),
    ("optimizer.name", "sam", "sharpness-aware minimisation"),
    ("optimizer.rho", 2.0, "rho 2"),
    ("optimizer.adaptive", True, "adaptive (ASAM)"),
    ("data.px_unaugmented", True, "no data augmentation on the p(x) branch"),
]

CASES = [
    *(("jem_cifar10.yaml", *row) for row in JEM_PAPER),
    *(("jempp_cifar10.yaml", *row) for row in JEMPP_PAPER),
    *(("sadajem_cifar10.yaml", *row) for row in SADAJEM_PAPER),
]


@pytest.mark.parametrize(("recipe", "key", "value", "source"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_recipe_holds_the_paper_value(recipe, key, value, source):
    cfg = OmegaConf.load(RECIPES / recipe)
    found = OmegaConf.select(cfg, key, default="<missing>")
    found = OmegaConf.to_object(found) if OmegaConf.is_config(found) else found
    assert found == value, f"{recipe} {key} is {found!r}; the paper says {value!r} ({source})"
    assert type(found) is type(value) or isinstance(value, float) and isinstance(found, (int, float))

