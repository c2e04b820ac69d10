"""The clipped_sgld plugin's own tests: jemkit's contract checks, then its behaviour.

Run them with ``python -m pytest examples/jemkit-clipped-sgld/tests`` once the plugin is
installed; jemkit's default test run collects them too (tests/test_example_plugin.py).
"""

from __future__ import annotations

import pytest
import torch

import jemkit_clipped_sgld
from jemkit.testing import check_component, check_transition, contract_cases


@pytest.mark.parametrize("component", contract_cases(jemkit_clipped_sgld))
def test_contract(component):
    """Shapes, finiteness, seeds, dtype and device moves: what jemkit checks on its own transitions."""
    check_component(component)


@pytest.mark.parametrize("max_grad_norm", [0.05, 100.0])
def test_contract_holds_whether_the_clip_bites_or_not(max_grad_norm):
    check_transition(
        jemkit_clipped_sgld.build_clipped_sgld, jemkit_clipped_sgld.ClippedSGLDParams(max_grad_norm=max_grad_norm)
    )


@pytest.fixture
def clipped():
    return jemkit_clipped_sgld


def quadratic(x: torch.Tensor) -> torch.Tensor:
    """E(x) = 0.5 |x|^2 per chain."""
    return 0.5 * x.pow(2).flatten(1).sum(1)


def test_clipped_step_bounds_every_chain_and_descends(clipped):
    torch.manual_seed(0)
    step_size, max_norm = 0.5, 0.2
    transition = clipped.build_clipped_sgld(
        clipped.ClippedSGLDParams(step_size=step_size, noise=0.0, max_grad_norm=max_norm), None
    )
    x = 10.0 + torch.randn(32, 1, 4, 4)  # far from the minimum: |dE/dx| = |x| ~ 40 >> max_grad_norm
    result = transition.step(x, quadratic)
    moved = (result.x - x).flatten(1).norm(dim=1)
    assert torch.all(moved <= step_size * max_norm * (1 + 1e-5)), moved.max()
    assert torch.allclose(moved, torch.full_like(moved, step_size * max_norm), rtol=1e-4)
    assert torch.all(quadratic(result.x) < quadratic(x))
    assert torch.allclose(result.energy, quadratic(x))
    # grad_norm reports the unclipped gradient (dE/dx = x here).
    assert result.grad_norm.item() == pytest.approx(x.flatten(1).norm(dim=1).mean().item(), rel=1e-5)
    assert not result.x.requires_grad


def test_small_gradients_are_not_scaled_up(clipped):
    transition = clipped.ClippedSGLD(step_size=0.5, noise=0.0, max_grad_norm=1.0)
    x = torch.full((4, 2), 0.1)  # |dE/dx| ~ 0.14 < 1: a plain SGLD step
    assert torch.allclose(transition.step(x, quadratic).x, 0.5 * x)


@pytest.mark.parametrize("bad", [{"max_grad_norm": 0.0}, {"max_grad_norm": -1.0}, {"step_size": -1.0}, {"noise": -0.1}])
def test_params_are_validated(clipped, bad):
    with pytest.raises(ValueError):
        clipped.ClippedSGLDParams(**bad)
