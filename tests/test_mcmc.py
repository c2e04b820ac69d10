"""Transitions on analytic energies: MALA, HMC and unadjusted Langevin moments, proximal SGLD's box, PYLD.

Moment tests run ``N_CHAINS`` independent chains from over-dispersed starts and compare the
final states' mean and covariance with the target's. The final states of independent chains are
independent draws once the chains have converged, so the effective sample size is the number of
chains, and each statistic ``mean over chains of f(x)`` has standard error ``sd(f) / sqrt(N)``
with ``sd(f)`` taken from exact i.i.d. draws of the target. Tolerances are ``Z`` standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from jemkit.contracts import Backbone, BuildContext, JointEnergyModel
from jemkit.errors import JemkitError, RecipeError
from jemkit.sampler import Sampler
from jemkit_plugins.samplers.jempp import PYLD, MissingFirstLayerError, ProximalSGLD, ProximalSGLDParams, PYLDParams
from jemkit_plugins.samplers.mcmc import HMC, MALA, HMCParams, MALAParams, build_hmc, build_mala
from jemkit_plugins.models.heads import LinearHead
from jemkit_plugins.samplers.sampling import SGLD, UniformNoise

from conftest import gaussian_classes_model

N_CHAINS = 3000
#: Standard errors allowed per statistic (about 1e-5 two-sided per statistic for a Gaussian mean).
Z = 4.5


# Tiny models run fastest on one thread and do not fight other jobs for the 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- targets

MU = torch.tensor([0.5, -1.0, 2.0])
_A = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.4, 0.3, 0.5]])
SIGMA = _A @ _A.T + 0.1 * torch.eye(3)  # full covariance, eigenvalues about 0.24, 0.79, 1.77
PRECISION = torch.linalg.inv(SIGMA)


def gaussian_energy(x: Tensor) -> Tensor:
    """E(x) = (x - mu)^T P (x - mu) / 2: the target N(MU, SIGMA)."""
    d = x - MU
    return 0.5 * ((d @ PRECISION) * d).sum(1)


MODE = 0.8
SPREAD = 0.4


def mixture_energy(x: Tensor) -> Tensor:
    """Equal mixture of N((+-0.8, 0), 0.4^2 I): E(x) = -log sum_k exp(-|x - m_k|^2 / (2 s^2)) (+ const)."""
    centres = torch.tensor([[MODE, 0.0], [-MODE, 0.0]])
    log_terms = -(x[:, None, :] - centres[None]).pow(2).sum(-1) / (2 * SPREAD**2)
    return -torch.logsumexp(log_terms, dim=1)


def mixture_draws(n: int, generator: torch.Generator) -> Tensor:
    sign = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    return torch.stack([sign * MODE, torch.zeros(n)], 1) + SPREAD * torch.randn(n, 2, generator=generator)


def gaussian_draws(n: int, generator: torch.Generator) -> Tensor:
    return MU + torch.randn(n, 3, generator=generator) @ torch.linalg.cholesky(SIGMA).T


def moment_statistics(x: Tensor, centre: Tensor) -> Tensor:
    """Per-draw statistics ``[n, d + d(d+1)/2]``: ``x_i`` and ``(x_i - c_i)(x_j - c_j)`` for i <= j."""
    d = x - centre
    i, j = torch.triu_indices(x.shape[1], x.shape[1])
    return torch.cat([x, d[:, i] * d[:, j]], 1)


def assert_moments_match(
    samples: Tensor, exact: Tensor, centre: Tensor, target_mean: Tensor, target_cov: Tensor
) -> None:
    """Chain means of the moment statistics within ``Z`` standard errors of the target's values."""
    i, j = torch.triu_indices(target_cov.shape[0], target_cov.shape[0])
    expected = torch.cat([target_mean, target_cov[i, j]])
    observed = moment_statistics(samples, centre).mean(0)
    standard_error = moment_statistics(exact, centre).std(0) / math.sqrt(samples.shape[0])
    z = (observed - expected).abs() / standard_error
    assert (z < Z).all(), f"z-scores {z.tolist()} (observed {observed.tolist()}, expected {expected.tolist()})"


def run_chains(transition, energy, x: Tensor, steps: int) -> tuple[Tensor, list[float]]:
    accepts = []
    for _ in range(steps):
        result = transition.step(x, energy)
        x = result.x
        if result.accept_rate is not None:
            assert result.accept_rate.dim() == 0
            accepts.append(float(result.accept_rate))
    return x, accepts


def _start(n: int, dim: int, seed: int, scale: float = 2.0) -> Tensor:
    return scale * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


EXACT_GAUSSIAN = gaussian_draws(200_000, torch.Generator().manual_seed(123))
EXACT_MIXTURE = mixture_draws(200_000, torch.Generator().manual_seed(123))
MIXTURE_MEAN = torch.zeros(2)
MIXTURE_COV = torch.diag(torch.tensor([MODE**2 + SPREAD**2, SPREAD**2]))


# --------------------------------------------------------------------------- MALA and HMC on a Gaussian


def test_mala_matches_gaussian_mean_and_full_covariance():
    torch.manual_seed(1)
    x, accepts = run_chains(MALA(step_size=0.1), gaussian_energy, _start(N_CHAINS, 3, 1), 250)
    assert_moments_match(x, EXACT_GAUSSIAN, MU, MU, SIGMA)
    assert 0.3 <= sum(accepts[-50:]) / 50 <= 0.95


def test_hmc_matches_gaussian_mean_and_full_covariance():
    torch.manual_seed(2)
    hmc = HMC(step_size=0.2, leapfrog_steps=5, step_jitter=0.2)
    x, accepts = run_chains(hmc, gaussian_energy, _start(N_CHAINS, 3, 2), 60)
    assert_moments_match(x, EXACT_GAUSSIAN, MU, MU, SIGMA)
    assert 0.6 <= sum(accepts[-20:]) / 20 <= 1.0


def test_moment_check_has_power_against_a_biased_sampler():
    """Unadjusted Langevin at MALA's step size is visibly biased: the same check rejects it."""
    torch.manual_seed(3)
    eps = 0.1
    x, _ = run_chains(SGLD(eps, math.sqrt(2 * eps)), gaussian_energy, _start(N_CHAINS, 3, 3), 250)
    with pytest.raises(AssertionError, match="z-scores"):
        assert_moments_match(x, EXACT_GAUSSIAN, MU, MU, SIGMA)


def test_unadjusted_langevin_has_its_expected_small_step_bias():
    """ULA on N(mu, P^-1) is stationary at N(mu, (P - eps P^2 / 2)^-1): unbiased mean, O(eps) inflated covariance."""
    torch.manual_seed(4)
    eps = 0.02
    x, _ = run_chains(SGLD(eps, math.sqrt(2 * eps)), gaussian_energy, _start(N_CHAINS, 3, 4), 600)
    biased_cov = torch.linalg.inv(PRECISION - eps * PRECISION @ PRECISION / 2)
    z = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(5))
    exact_biased = MU + z @ torch.linalg.cholesky(biased_cov).T
    assert_moments_match(x, exact_biased, MU, MU, biased_cov)
    # The bias itself is small: at most about eps/2 * lambda_max(SIGMA) relative.
    assert (biased_cov - SIGMA).abs().max() < eps * float(torch.linalg.eigvalsh(SIGMA).max())


def test_mala_acceptance_falls_with_the_step_size():
    rates = []
    for eps in (0.01, 0.1, 1.5):
        torch.manual_seed(6)
        start = gaussian_draws(N_CHAINS, torch.Generator().manual_seed(6))  # already stationary
        _, accepts = run_chains(MALA(eps), gaussian_energy, start, 20)
        rates.append(sum(accepts) / len(accepts))
    assert rates[0] > 0.95 and 0.3 <= rates[1] <= 0.95 and rates[2] < 0.3, rates


# --------------------------------------------------------------------------- the two-mode mixture


@pytest.mark.parametrize(
    ("transition", "steps"),
    [(MALA(step_size=0.12), 400), (HMC(step_size=0.25, leapfrog_steps=5, step_jitter=0.2), 100)],
    ids=["mala", "hmc"],
)
def test_two_mode_mixture_from_one_mode(transition, steps):
    """Every chain starts in the right mode; the moments need mass moved into the left one too."""
    torch.manual_seed(7)
    start = torch.tensor([MODE, 0.0]) + SPREAD * torch.randn(N_CHAINS, 2, generator=torch.Generator().manual_seed(7))
    x, accepts = run_chains(transition, mixture_energy, start, steps)
    assert_moments_match(x, EXACT_MIXTURE, MIXTURE_MEAN, MIXTURE_MEAN, MIXTURE_COV)
    assert min(accepts) > 0.3


# --------------------------------------------------------------------------- mechanics


def _counting(energy):
    calls = {"n": 0}

    def counted(x):
        calls["n"] += 1
        return energy(x)

    return counted, calls


def test_mala_and_hmc_reuse_the_last_gradient_within_a_chain():
    """One gradient evaluation per MALA step and L per HMC step, after the first step."""
    x = torch.randn(10, 3)
    counted, calls = _counting(gaussian_energy)
    mala = MALA(0.1)
    for _ in range(5):
        x = mala.step(x.detach(), counted).x  # .detach(): a new tensor object over the same storage
    assert calls["n"] == 1 + 5
    counted, calls = _counting(gaussian_energy)
    hmc = HMC(0.1, leapfrog_steps=3)
    for _ in range(4):
        x = hmc.step(x, counted).x
    assert calls["n"] == 1 + 4 * 3
    # A changed input (even in place) or another energy function is recomputed.
    x.add_(1.0)
    hmc.step(x, counted)
    assert calls["n"] == 1 + 4 * 3 + 1 + 3


def test_mala_is_exact_on_a_flat_region_and_rejects_nonfinite_proposals():
    x = torch.zeros(500, 2)
    nan_right = lambda z: torch.where(z[:, 0] > 0, torch.full_like(z[:, 0], float("nan")), 0.0 * z[:, 0])  # noqa: E731
    torch.manual_seed(8)
    result = MALA(0.5).step(x, nan_right)
    moved_right = result.x[:, 0] > 0
    assert not moved_right.any(), "proposals with NaN energy are always rejected"
    assert 0.3 < float(result.accept_rate) < 0.7  # about half the proposals land at x0 < 0, all accepted
    assert torch.isfinite(result.x).all()


def test_hmc_with_tiny_steps_conserves_energy_and_accepts_all():
    torch.manual_seed(9)
    result = HMC(1e-3, leapfrog_steps=5).step(gaussian_draws(200, torch.Generator().manual_seed(9)), gaussian_energy)
    assert float(result.accept_rate) == 1.0


def test_sampler_diagnostics_carry_the_acceptance_rate(plugins):
    model = gaussian_classes_model([[0.5, 0.0], [-0.5, 0.0]])
    for name, params in (("mala", MALAParams(0.05)), ("hmc", HMCParams(0.1, 3))):
        transition = plugins.registries["transition"].get(name).factory(params, BuildContext())
        sampler = Sampler(UniformNoise((2,), 2.0, 3.0), transition, steps=10)  # start far from the modes
        sampler.sample(model, 64)
        d = sampler.last_diagnostics
        assert 0.0 <= d["accept_rate"] <= 1.0 and d["accept_rate"] > 0.2, (name, d)
        assert d["energy_end"] < d["energy_start"] and d["grad_norm"] > 0


def test_invalid_parameters_are_rejected():
    for bad in (lambda: MALAParams(step_size=0.0), lambda: HMCParams(leapfrog_steps=0), lambda: HMCParams(mass=-1.0),
                lambda: HMCParams(step_jitter=1.0), lambda: ProximalSGLDParams(grad_clamp=0.0),
                lambda: ProximalSGLDParams(low=1.0, high=-1.0), lambda: PYLDParams(inner_steps=0)):
        with pytest.raises(ValueError):
            bad()
    assert isinstance(build_mala(MALAParams(), BuildContext()), MALA)
    assert isinstance(build_hmc(HMCParams(), BuildContext()), HMC)


# --------------------------------------------------------------------------- proximal SGLD


def test_proximal_sgld_never_leaves_the_box():
    """Energies that push hard outwards (and noise) never move a sample outside [low, high]."""
    torch.manual_seed(10)
    params = ProximalSGLDParams(step_size=0.7, grad_clamp=0.5, low=-1.0, high=1.0, noise=0.3)
    transition = ProximalSGLD(params)
    outward = lambda x: -50.0 * x.flatten(1).pow(2).sum(1)  # noqa: E731  (E falls away from 0)
    x = torch.rand(256, 1, 4, 4) * 2 - 1
    for _ in range(40):
        x = transition.step(x, outward).x
        assert x.min() >= -1.0 and x.max() <= 1.0
    assert (x.abs() == 1.0).float().mean() > 0.5, "the energy drives most coordinates onto the walls"


def test_proximal_sgld_step_matches_hand_computation():
    params = ProximalSGLDParams(step_size=0.25, grad_clamp=1.0, low=-1.0, high=1.0)
    x = torch.tensor([[0.0, 0.5, -0.9]])
    slope = torch.tensor([4.0, -0.2, 3.0])  # E = slope . x: dE/dx = slope
    result = ProximalSGLD(params).step(x, lambda z: (z * slope).sum(1))
    # clamp(grad) = [1, -0.2, 1]; x - 0.25 * that = [-0.25, 0.55, -1.15] -> clamp -> -1.0
    assert torch.allclose(result.x, torch.tensor([[-0.25, 0.55, -1.0]]))
    assert result.grad_norm.item() == pytest.approx(float(slope.norm()))


# --------------------------------------------------------------------------- PYLD


class _FirstLayerBackbone(Backbone):
    def __init__(self) -> None:
        super().__init__()
        self.feature_dim = 3
        self.first_layer = nn.Linear(2, 4)
        self.rest = nn.Sequential(nn.Tanh(), nn.Linear(4, 3), nn.Tanh())

    def forward(self, x):
        return self.rest(self.first_layer(x))


def test_pyld_inner_steps_use_the_first_layer_vjp_with_fixed_p():
    torch.manual_seed(11)
    model = JointEnergyModel(_FirstLayerBackbone(), LinearHead(3, 3))
    params = PYLDParams(step_size=0.05, inner_steps=3, grad_clamp=0.02, low=-1.0, high=1.0)
    pyld = PYLD(params)
    pyld.bind(model, None)
    x = torch.rand(5, 2) * 1.6 - 0.8
    result = pyld.step(x, model.energy)

    # By hand: p = dE/dz1 at x; each update x <- clamp(x - s * clamp(W^T p, -c, c), -1, 1).
    z1 = model.backbone.first_layer(x).detach().requires_grad_(True)
    energy = model.head.energy(model.head(model.backbone.rest(z1)))
    (p,) = torch.autograd.grad(energy.sum(), z1)
    expected = x.clone()
    for _ in range(3):
        expected = (expected - 0.05 * (p @ model.backbone.first_layer.weight).clamp(-0.02, 0.02)).clamp(-1, 1)
    assert torch.allclose(result.x, expected, atol=1e-6)
    assert torch.allclose(result.energy, model.energy(x).detach())


def test_pyld_through_the_sampler_binds_the_model_and_descends(plugins):
    from jemkit_plugins.models.backbones import ConvNetParams, build_convnet

    torch.manual_seed(12)
    context = BuildContext(input_shape=(1, 8, 8), num_classes=10)
    backbone = build_convnet(ConvNetParams(channels=[8, 16], feature_dim=16), context)
    model = JointEnergyModel(backbone, LinearHead(16, 10))
    factory = plugins.registries["transition"].get("pyld").factory
    transition = factory(PYLDParams(step_size=0.02, inner_steps=2), context)
    sampler = Sampler(UniformNoise((1, 8, 8)), transition, steps=10)
    x = sampler.sample(model, 32)
    assert transition.first_layer is backbone.first_layer
    assert x.min() >= -1 and x.max() <= 1
    d = sampler.last_diagnostics
    assert d["energy_end"] < d["energy_start"]


def test_pyld_without_a_first_layer_is_a_clear_recipe_error():
    model = gaussian_classes_model([[0.5, 0.0], [-0.5, 0.0]])
    sampler = Sampler(UniformNoise((2,)), PYLD(PYLDParams()), steps=2)
    with pytest.raises(MissingFirstLayerError) as info:
        sampler.sample(model, 4)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RecipeError)
    assert isinstance(info.value, JemkitError)
    assert "first_layer" in str(info.value) and "proximal_sgld" in str(info.value)
