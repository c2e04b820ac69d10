"""PGD attacks, input refinement and the JEM defence, on models whose answers are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jemkit.contracts import Backbone, BuildContext, JointEnergyModel
from jemkit.evaluation.pgd import accuracy, pgd_attack
from jemkit.evaluation.refine import DefendedClassifier, refine
from jemkit_plugins.data.data_digits import DigitsParams, build_digits
from jemkit_plugins.models.heads import LinearHead
from jemkit_plugins.samplers.sampling import SGLD


class _Linear2:
    """Two-class linear classifier ``logits = x W^T + b`` on flat inputs (float64)."""

    def __init__(self, d: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(2, d, generator=g, dtype=torch.float64) * 0.3
        self.b = torch.randn(2, generator=g, dtype=torch.float64) * 0.1

    def __call__(self, x):
        return x @ self.w.T + self.b


def test_linf_pgd_on_a_linear_model_finds_the_analytic_worst_case():
    model = _Linear2(16, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (200,), generator=g)
    direction = model.w[y] - model.w[1 - y]  # d margin / dx for each example's true class
    margin = (x * direction).sum(1) + model.b[y] - model.b[1 - y]
    for eps in (0.05, 0.2, 0.5):
        adv = pgd_attack(model, x, y, "linf", eps, steps=10, clamp=None)
        # the worst case within the L-inf ball moves every coordinate by eps against the margin
        assert torch.allclose(adv - x, -eps * direction.sign(), atol=1e-12)
        worst_margin = margin - eps * direction.abs().sum(1)
        assert accuracy(model, adv, y) == pytest.approx(float((worst_margin > 0).double().mean()))
    assert accuracy(model, x, y) > accuracy(model, pgd_attack(model, x, y, "linf", 0.5, steps=10, clamp=None), y)


@pytest.fixture(scope="module")
def digits_mlp():
    """A small MLP trained on the digits train split (seeded); returns it with 200 test examples."""
    data = build_digits(DigitsParams(), BuildContext())
    x_train, y_train = data.train.x, data.train.targets
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train), y_train).backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    return model, data.test.x[:200], data.test.targets[:200]


@pytest.mark.parametrize("norm,eps_list", [("linf", [0.0, 0.05, 0.1, 0.2, 0.4]), ("l2", [0.0, 0.25, 0.5, 1.0, 2.0])])
def test_pgd_on_a_trained_model(digits_mlp, norm, eps_list):
    model, x, y = digits_mlp
    clean = accuracy(model, x, y)
    assert clean > 0.9
    accuracies = []
    for eps in eps_list:
        adv = pgd_attack(model, x, y, norm, eps, steps=10)
        delta = (adv - x).flatten(1)
        size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-5).all(), "perturbations stay within eps"
        assert (adv >= torch.minimum(x, torch.tensor(-1.0)) - 1e-6).all()
        assert (adv <= torch.maximum(x, torch.tensor(1.0)) + 1e-6).all()
        accuracies.append(accuracy(model, adv, y))
    assert accuracies[0] == clean, "eps = 0 is the clean accuracy"
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] < clean - 0.3, "the strongest attack must hurt"


def test_pgd_random_start_respects_the_ball(digits_mlp):
    model, x, y = digits_mlp
    generator = torch.Generator().manual_seed(0)
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        adv = pgd_attack(model, x, y, norm, eps, steps=3, random_start=True, generator=generator)
        delta = (adv - x).flatten(1)
        size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-5).all() and (size > 0).any()


# --------------------------------------------------------------------------- refinement and defence


class _Flat(Backbone):
    def __init__(self):
        super().__init__()
        self.feature_dim = 16
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh())

    def forward(self, x):
        return self.net(x)


def _tiny_jem() -> JointEnergyModel:
    torch.manual_seed(0)
    return JointEnergyModel(_Flat(), LinearHead(16, 10)).eval().requires_grad_(False)


def test_refinement_lowers_the_energy():
    model = _tiny_jem()
    x = torch.rand(32, 1, 8, 8) * 2 - 1
    refined = refine(model, x, SGLD(step_size=0.05, noise=0.0), steps=20)
    assert not refined.requires_grad and refined.shape == x.shape
    assert model.energy(refined).mean() < model.energy(x).mean()
    assert torch.equal(refine(model, x, SGLD(0.05, 0.0), steps=0), x)


def test_defence_without_refinement_or_noise_is_the_model():
    model = _tiny_jem()
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    defended = DefendedClassifier(model, SGLD(1.0, 0.01), steps=0, copies=1, noise=0.0)
    assert torch.allclose(defended(x), model(x))


def test_defence_gradients_are_bpda_through_the_refinement():
    model = _tiny_jem()
    x = (torch.rand(8, 1, 8, 8) * 2 - 1).requires_grad_(True)
    torch.manual_seed(1)
    defended = DefendedClassifier(model, SGLD(0.05, 0.0), steps=3, copies=2, noise=0.0)
    logits = defended(x)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    # with no noise, both copies refine to the same point r; BPDA's gradient is the model's gradient at r
    r = refine(model, x.detach(), SGLD(0.05, 0.0), steps=3).requires_grad_(True)
    (expected,) = torch.autograd.grad(model(r)[:, 0].sum(), r)
    assert torch.allclose(grad, expected, atol=1e-6)
    assert torch.allclose(logits, model(r), atol=1e-6)


def test_pgd_against_the_defence_stays_in_the_ball():
    model = _tiny_jem()
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    y = model(x).argmax(1)
    defended = DefendedClassifier(model, SGLD(0.05, 0.01), steps=2, copies=2, noise=0.03)
    adv = pgd_attack(defended, x, y, "linf", 0.2, steps=3)
    assert (adv - x).abs().max() <= 0.2 + 1e-6
    assert accuracy(model, adv, y) < 1.0


def test_end_to_end_defence_gradient_matches_finite_differences():
    model = _tiny_jem().double()
    sgld = SGLD(0.05, 0.0)
    defended = DefendedClassifier(model, sgld, steps=3, copies=1, noise=0.0, attack="end_to_end")
    x = (torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(defended(x)[:, 3].sum(), x)

    def f(inputs):
        with torch.no_grad():
            return defended(inputs)[:, 3].sum()  # no gradient wanted: the transition's own refinement

    h = 1e-5
    for index in [(0, 0, 2, 3), (1, 0, 5, 1), (1, 0, 7, 7)]:
        bump = torch.zeros_like(x)
        bump[index] = h
        numeric = (f(x.detach() + bump) - f(x.detach() - bump)) / (2 * h)
        assert float(grad[index]) == pytest.approx(float(numeric), rel=1e-4, abs=1e-8)
    # the straight-through (BPDA) gradient differs: it ignores how refinement depends on x
    bpda = DefendedClassifier(model, sgld, steps=3, copies=1, noise=0.0, attack="bpda")
    (approx,) = torch.autograd.grad(bpda(x)[:, 3].sum(), x)
    assert not torch.allclose(grad, approx)


def _registered(plugins, name, **params):
    from jemkit.config import build_params

    component = plugins.registries["transition"].get(name)
    return component.factory(build_params(component.params, params, name), BuildContext(input_shape=(1, 8, 8)))


def test_differentiable_steps_are_the_transitions_own_updates(plugins):
    """sgld (its own step size and noise, defaults included), langevin (noise sqrt(2 * step_size)) and
    proximal_sgld differentiate their own update: the same numbers and random draws as ``step``."""
    model = _tiny_jem().double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model.energy(x).sum(), x)
    cases = (
        (_registered(plugins, "sgld", step_size=0.5, noise=0.02), 0.5, 0.02),
        (_registered(plugins, "sgld"), 1.0, 0.01),  # the transition's own defaults
        (_registered(plugins, "langevin", step_size=0.02), 0.02, 0.2),
    )
    for transition, step_size, noise in cases:
        assert transition.differentiable
        torch.manual_seed(7)
        moved = transition.differentiable_step(x, model.energy)
        assert moved.requires_grad and moved.grad_fn is not None, "the result stays in x's graph"
        torch.manual_seed(7)
        expected = x.detach() - step_size * grad + noise * torch.randn_like(x)
        assert torch.allclose(moved.detach(), expected, atol=1e-12)
        torch.manual_seed(7)
        assert torch.equal(transition.step(x.detach(), model.energy).x, moved.detach())
    proximal = _registered(plugins, "proximal_sgld", step_size=0.5, noise=0.01)
    torch.manual_seed(7)
    moved = proximal.differentiable_step(x, model.energy)
    torch.manual_seed(7)
    assert torch.equal(proximal.step(x.detach(), model.energy).x, moved.detach())
    assert moved.detach().abs().max() <= 1.0


def test_end_to_end_proximal_refinement_gradient_matches_finite_differences(plugins):
    model = _tiny_jem().double()
    proximal = _registered(plugins, "proximal_sgld", step_size=0.5, grad_clamp=0.01)
    defended = DefendedClassifier(model, proximal, steps=3, copies=1, noise=0.0, attack="end_to_end")
    x = (torch.rand(2, 1, 8, 8, dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    (grad,) = torch.autograd.grad(defended(x)[:, 3].sum(), x)

    def f(inputs):
        with torch.no_grad():
            return defended(inputs)[:, 3].sum()

    h = 1e-6
    for index in [(0, 0, 2, 3), (1, 0, 5, 1), (1, 0, 7, 7)]:
        bump = torch.zeros_like(x)
        bump[index] = h
        numeric = (f(x.detach() + bump) - f(x.detach() - bump)) / (2 * h)
        assert float(grad[index]) == pytest.approx(float(numeric), rel=1e-4, abs=1e-8)


def test_transitions_without_a_differentiable_step_refuse_the_end_to_end_attack(plugins):
    from omegaconf import OmegaConf

    from jemkit.errors import EvalError
    from jemkit.evaluation.components import defence_transition
    from jemkit.evaluation.settings import resolve_settings

    model = _tiny_jem()
    mala = _registered(plugins, "mala", step_size=0.1)
    assert not mala.differentiable
    with pytest.raises(NotImplementedError, match="differentiable = False"):
        mala.differentiable_step(torch.zeros(1, 1, 8, 8, requires_grad=True), model.energy)
    with pytest.raises(ValueError, match="bpda"):
        DefendedClassifier(model, mala, steps=1, copies=1, noise=0.0, attack="end_to_end")
    assert DefendedClassifier(model, mala, steps=1, copies=1, noise=0.0, attack="bpda").attack == "bpda"

    class _Run:  # what defence_transition reads of a LoadedRun
        cfg = OmegaConf.create({"sampler": {"transition": {"name": "mala", "step_size": 0.1}}})
        sampler = type("S", (), {"transition": mala, "model_mode": "eval"})()
        context = BuildContext(input_shape=(1, 8, 8))

    # the run's own transition (digits runs otherwise refine with the profile's SGLD)
    settings = resolve_settings("digits", {"defence": True, "defence_attack": "end_to_end", "refine_step_size": "run"})
    with pytest.raises(EvalError, match="--defence-attack bpda") as info:
        defence_transition(plugins, settings, _Run())
    message = str(info.value)
    assert "'mala'" in message and "sgld" in message and "langevin" in message and "proximal_sgld" in message
    assert "hmc" not in message, "only transitions that declare a differentiable step are offered"
    bpda = resolve_settings("digits", {"defence": True, "defence_attack": "bpda", "refine_step_size": "run"})
    assert defence_transition(plugins, bpda, _Run())[0] is mala
    cli_sgld = resolve_settings("digits", {"defence": True, "refine_step_size": 0.5, "refine_noise": 0.02})
    transition, info_cli = defence_transition(plugins, cli_sgld, _Run())
    assert (transition.step_size, transition.noise) == (0.5, 0.02) and info_cli["source"] == "cli"
