"""Tests written for mutants that survived `scripts/mutation.sh` in the second round (issue 13):
contracts.py, checkpoint.py, the sampler plugins, and the open survivors of config.py. Each pins a
behaviour the module's own tests left open. Grouped by the module the mutant lived in."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from omegaconf import OmegaConf

from jemkit.checkpoint import decode_tree, load_checkpoint, resolve_checkpoint, save_checkpoint
from jemkit.config import (
    UNSET,
    Change,
    TrainParams,
    apply_overrides,
    check_interpolations,
    fixed_reason,
    read_run_config,
    recipe_changes,
    to_yaml,
)
from jemkit.contracts import (
    Batch,
    ChainInit,
    ChainStart,
    FeatureExtractor,
    Loss,
    StepResult,
    Transition,
    energy_and_grad,
)
from jemkit.errors import CheckpointError, JemkitError
from jemkit.sampler import Sampler
from jemkit.testing import tiny_model

# --- jemkit/contracts.py --------------------------------------------------------------------------


class _MemorylessInit(ChainInit):
    """Chains start at zeros and report no reinit fraction (the default applies)."""

    def start(self, n, y, device):
        return ChainStart(x=torch.zeros(n, 1, 8, 8, device=device))


class _GradientStep(Transition):
    def step(self, x, energy_fn):
        energy, grad = energy_and_grad(energy_fn, x)
        return StepResult(x=x - 0.1 * grad, energy=energy, grad_norm=grad.flatten(1).norm(dim=1).mean())


def test_a_chain_start_without_memory_counts_every_chain_as_fresh():
    sampler = Sampler(_MemorylessInit(), _GradientStep(), steps=1)
    sampler.sample(tiny_model(), 3)
    assert sampler.last_diagnostics["reinit_fraction"] == 1.0


def test_a_transition_is_neither_graph_safe_nor_differentiable_unless_it_says_so():
    t = _GradientStep()
    assert (t.graph_safe, t.differentiable) == (False, False)
    with pytest.raises(NotImplementedError, match="_GradientStep has no differentiable step"):
        t.differentiable_step(torch.zeros(2, 3, requires_grad=True), lambda x: (x**2).sum(1))


class _Extractor(FeatureExtractor):
    feature_dim, num_classes = 3, 5

    def features_and_logits(self, x):
        flat = x.flatten(1)
        return flat[:, :3] * 2, flat[:, :5] - 1


def test_a_feature_extractor_called_returns_its_features_not_its_logits():
    x = torch.arange(12.0).view(2, 6)
    assert torch.equal(_Extractor()(x), torch.tensor([[0.0, 2.0, 4.0], [12.0, 14.0, 16.0]]))


def test_batch_px_inputs_is_the_unaugmented_copy_when_given():
    x, y, x_px = torch.ones(2, 3), torch.tensor([0, 1]), torch.full((2, 3), 5.0)
    assert Batch(x=x, y=y).px_inputs is x
    assert Batch(x=x, y=y, x_px=x_px).px_inputs is x_px


def test_a_loss_without_call_cannot_be_built():
    class NoCall(Loss):
        needs_sampler = True

    with pytest.raises(TypeError, match="abstract"):
        NoCall()

    class Zero(Loss):
        def __call__(self, model, batch, sampler):
            raise AssertionError("not called")

    assert Zero().needs_sampler is False

# --- jemkit/checkpoint.py ------------------------------------------------------------------------


def test_resolve_checkpoint_finds_a_step_given_as_a_number_or_digits(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (3, 12):
        save_checkpoint(folder / f"step_{step:06d}.safetensors", {"step": step})
    assert resolve_checkpoint(tmp_path, 3) == folder / "step_000003.safetensors"
    assert resolve_checkpoint(tmp_path, "12") == folder / "step_000012.safetensors"
    assert load_checkpoint(resolve_checkpoint(tmp_path, "3")).state == {"step": 3}
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 4 .*steps available: 3, 12"):
        resolve_checkpoint(tmp_path, 4)


def test_a_malformed_skeleton_node_is_quoted_whole_when_short_and_cut_at_80_characters_when_long():
    with pytest.raises(ValueError) as short:
        decode_tree({}, '{"$dict": 5}')
    assert str(short.value) == 'malformed dict node {"$dict": 5}'
    long_node = '{"$dict": "' + "x" * 200 + '"}'
    with pytest.raises(ValueError) as long:
        decode_tree({}, long_node)
    assert str(long.value) == "malformed dict node " + long_node[:77] + "..."


def test_a_loaded_tensor_is_a_copy_not_a_view_of_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.arange(4096, dtype=torch.float32)})
    loaded = load_checkpoint(path).state["w"]
    with open(path, "r+b") as handle:  # overwrite the tensor bytes in place (same inode)
        handle.seek(-4096, os.SEEK_END)
        handle.write(bytes(4096))
    assert torch.equal(loaded, torch.arange(4096, dtype=torch.float32))


def test_a_slow_test_write_goes_out_in_eight_slices_with_a_pause_after_each(tmp_path, monkeypatch):
    import jemkit.checkpoint as checkpoint

    pauses: list[float] = []
    monkeypatch.setattr(checkpoint.time, "sleep", pauses.append)
    monkeypatch.setenv(checkpoint.SLOW_WRITE_ENV, "0.4")
    state = {"w": torch.arange(1000, dtype=torch.float32)}
    path = save_checkpoint(tmp_path / "slow.safetensors", state)
    assert pauses == pytest.approx([0.05] * 8)  # 8 slices, 0.4 s in all
    assert torch.equal(load_checkpoint(path).state["w"], state["w"])


# --- plugins/samplers/mcmc.py ---------------------------------------------------------------------


def _half_square(x):
    """E(x) = |x|^2 / 2 per chain (a standard Gaussian); dE/dx = x."""
    return 0.5 * x.flatten(1).pow(2).sum(1)


@pytest.mark.parametrize(("mass", "eps", "jitter"), [(1.0, 1.5, 0.0), (4.0, 3.0, 0.0), (1.0, 1.5, 0.5)])
def test_one_hmc_leapfrog_step_matches_the_hand_computation(mass, eps, jitter):
    """L = 1 on E(x) = |x|^2 / 2 from fixed starts, replaying the transition's random draws: the
    per-chain step-size jitter U(-1, 1) (only when jitter > 0), the momenta N(0, m I), the Metropolis
    uniforms."""
    from jemkit_plugins.samplers.mcmc import HMC

    n = 64
    x0 = torch.linspace(-2.0, 2.0, n * 2).view(n, 2)
    torch.manual_seed(5)
    step = eps * (1 + jitter * (torch.rand(n) * 2 - 1))[:, None] if jitter else torch.full((n, 1), eps)
    z, u = torch.randn(n, 2), torch.rand(n)
    p0 = z * mass**0.5
    p_half = p0 - 0.5 * step * x0  # dE/dx = x
    x1 = x0 + (step / mass) * p_half
    p1 = p_half - 0.5 * step * x1
    h0 = 0.5 * x0.pow(2).sum(1) + p0.pow(2).sum(1) / (2 * mass)
    h1 = 0.5 * x1.pow(2).sum(1) + p1.pow(2).sum(1) / (2 * mass)
    accept = torch.log(u) < h0 - h1
    assert 0 < int(accept.sum()) < n  # both outcomes occur
    if jitter:
        assert step.min() < eps * 0.75 and step.max() > eps * 1.25  # the jitter goes both ways
    torch.manual_seed(5)
    result = HMC(step_size=eps, leapfrog_steps=1, mass=mass, step_jitter=jitter).step(x0, _half_square)
    assert torch.allclose(result.x, torch.where(accept[:, None], x1, x0), atol=1e-5)
    assert result.accept_rate.item() == pytest.approx(accept.float().mean().item())


def test_mcmc_parameters_refuse_a_zero_mass_or_step_and_take_small_positive_ones():
    from jemkit_plugins.samplers.mcmc import HMCParams, MALAParams

    for bad in (lambda: HMCParams(mass=0.0), lambda: HMCParams(step_size=0.0), lambda: MALAParams(step_size=0.0)):
        with pytest.raises(ValueError, match="must be positive"):
            bad()
    assert HMCParams(mass=0.25, step_size=0.5, leapfrog_steps=1).mass == 0.25
    assert MALAParams(step_size=0.5).step_size == 0.5


# --- plugins/samplers/sampling.py -----------------------------------------------------------------


def test_uniform_noise_fills_low_to_high_evenly():
    from jemkit_plugins.samplers.sampling import UniformNoise

    torch.manual_seed(0)
    for init, low, high in ((UniformNoise((4,)), -1.0, 1.0), (UniformNoise((4,), low=0.5, high=3.5), 0.5, 3.5)):
        x = init.noise(5000)
        assert x.shape == (5000, 4)
        assert low <= float(x.min()) < low + 0.01 and high - 0.01 < float(x.max()) < high
        assert float(x.mean()) == pytest.approx((low + high) / 2, abs=0.03)
        # U(low, high): a quarter of the draws in each quarter of the range
        quarter = ((x - low) / (high - low) * 4).floor()
        share = torch.bincount(quarter.flatten().long(), minlength=4).float().div(x.numel())
        assert share.tolist() == pytest.approx([0.25] * 4, abs=0.02)


def test_replay_buffer_defaults_are_jems_and_its_parameters_are_checked():
    from jemkit_plugins.samplers.sampling import LangevinParams, ReplayBufferParams, SGLDParams

    p = ReplayBufferParams()
    defaults = (p.size, p.reinit_freq, p.class_conditional, p.low, p.high, p.on_device)
    assert defaults == (10000, 0.05, False, -1.0, 1.0, False)
    for ok in (dict(size=1), dict(reinit_freq=0.0), dict(reinit_freq=1.0)):
        ReplayBufferParams(**ok)
    for bad in (dict(size=0), dict(reinit_freq=-0.01), dict(reinit_freq=1.01)):
        with pytest.raises(ValueError):
            ReplayBufferParams(**bad)
    SGLDParams(step_size=0.0, noise=0.0)
    for bad in (dict(step_size=-1.0), dict(noise=-0.1)):
        with pytest.raises(ValueError, match="non-negative"):
            SGLDParams(**bad)
    assert LangevinParams(step_size=0.5).step_size == 0.5
    with pytest.raises(ValueError, match="positive"):
        LangevinParams(step_size=0.0)


def test_replay_buffer_restarts_about_reinit_freq_of_the_chains_from_noise():
    from jemkit_plugins.samplers.sampling import ReplayBuffer

    torch.manual_seed(0)
    buffer = ReplayBuffer((2,), size=1000, reinit_freq=0.2)
    # a new buffer holds U(-1, 1) noise by default
    assert -1.0 <= float(buffer.buffer.min()) < -0.98 and 0.98 < float(buffer.buffer.max()) < 1.0
    assert float(buffer.buffer.mean()) == pytest.approx(0.0, abs=0.05)
    buffer.buffer.fill_(5.0)  # stored states lie outside the noise range [-1, 1)
    start = buffer.start(4000, None, torch.device("cpu"))
    fresh = (start.x.abs() <= 1).all(1).float().mean()
    assert float(start.reinit_fraction) == pytest.approx(float(fresh))
    assert float(fresh) == pytest.approx(0.2, abs=0.025)
    assert float(buffer.start(0, None, torch.device("cpu")).reinit_fraction) == 0.0


# --- plugins/samplers/jempp.py --------------------------------------------------------------------


def test_proximal_noise_has_the_given_std_and_no_noise_means_none():
    from jemkit_plugins.samplers.jempp import proximal_update

    torch.manual_seed(0)
    x, grad = torch.zeros(20000, 2), torch.zeros(20000, 2)
    moved = proximal_update(x, grad, step_size=1.0, grad_clamp=1.0, low=-10.0, high=10.0, noise=0.1)
    assert float(moved.std()) == pytest.approx(0.1, rel=0.03)
    assert float(moved.abs().max()) < 0.6  # Gaussian tails, not a ratio of Gaussians
    half = torch.full((20000, 2), 0.5)
    still = proximal_update(x, half, step_size=1.0, grad_clamp=1.0, low=-10.0, high=10.0, noise=0.0)
    assert torch.equal(still, torch.full((20000, 2), -0.5))


def test_proximal_sgld_defaults_and_step_size_bounds():
    from jemkit_plugins.samplers.jempp import ProximalSGLDParams

    p = ProximalSGLDParams()
    assert (p.step_size, p.grad_clamp, p.low, p.high, p.noise) == (1.0, 1.0, -1.0, 1.0, 0.0)
    assert ProximalSGLDParams(step_size=0.0).step_size == 0.0
    assert ProximalSGLDParams(step_size=0.5).step_size == 0.5
    with pytest.raises(ValueError, match="non-negative"):
        ProximalSGLDParams(step_size=-0.5)


def test_pyld_takes_one_inner_step_but_not_zero():
    from jemkit_plugins.samplers.jempp import PYLD, PYLDParams

    one = PYLD(PYLDParams(step_size=0.1, inner_steps=1))
    x = torch.tensor([[0.5, -0.5]])
    assert torch.allclose(one.step(x, _half_square).x, torch.tensor([[0.45, -0.45]]))
    with pytest.raises(ValueError, match="at least 1"):
        PYLDParams(inner_steps=0)


def test_which_transitions_declare_themselves_differentiable_and_graph_safe():
    from jemkit_plugins.samplers.jempp import PYLD, ProximalSGLD, ProximalSGLDParams, PYLDParams

    prox = ProximalSGLD(ProximalSGLDParams(step_size=0.1, noise=0.0))
    assert (prox.differentiable, prox.graph_safe) == (True, True)
    assert (PYLD(PYLDParams()).differentiable, PYLD(PYLDParams()).graph_safe) == (False, False)
    x = torch.tensor([[0.2, -0.4]], requires_grad=True)
    moved = prox.differentiable_step(x, _half_square)
    assert torch.allclose(moved, prox.step(x.detach(), _half_square).x)
    moved.sum().backward()  # d/dx of x - 0.1 * x (no clamp binds) is 0.9
    assert torch.allclose(x.grad, torch.full((1, 2), 0.9))


def test_pyld_inner_steps_take_the_vjp_at_the_current_point_through_a_nonlinear_first_layer():
    from jemkit.contracts import Backbone, JointEnergyModel
    from jemkit_plugins.samplers.jempp import PYLD, PYLDParams

    class _Linear(torch.nn.Module):
        def forward(self, h):
            return h @ torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0], [2.0, 0.0, 1.0]])

    class Head(torch.nn.Module):
        num_classes = 3

        def forward(self, h):
            return _Linear()(h)

        def energy(self, logits, y=None):
            return -torch.logsumexp(logits, 1)

    class Net(Backbone):
        feature_dim = 3

        def __init__(self):
            super().__init__()
            self.first_layer = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh())
            with torch.no_grad():
                self.first_layer[0].weight.copy_(torch.tensor([[2.0, -1.0], [0.5, 1.5], [-1.0, 1.0]]))
                self.first_layer[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

        def forward(self, x):
            return self.first_layer(x)

    model = JointEnergyModel(Net(), Head())
    s, c = 0.3, 10.0  # a clamp that never binds
    pyld = PYLD(PYLDParams(step_size=s, grad_clamp=c, inner_steps=3, low=-5.0, high=5.0))
    pyld.bind(model, None)
    x0 = torch.tensor([[0.4, -0.3], [-0.6, 0.8]])
    result = pyld.step(x0, model.energy)

    # By hand: p = dE/dz1 at x0 (held fixed); step 1 uses dE/dx at x0, later steps J(x)^T p at the current x.
    w, b = model.backbone.first_layer[0].weight.detach(), model.backbone.first_layer[0].bias.detach()
    z1 = torch.tanh(x0 @ w.T + b).requires_grad_(True)
    (p,) = torch.autograd.grad(model.head.energy(model.head(z1)).sum(), z1)

    def vjp(x):
        return (p * (1 - torch.tanh(x @ w.T + b) ** 2)) @ w

    expected = x0 - s * vjp(x0)  # at x0 the vjp is dE/dx
    for _ in range(2):
        expected = expected - s * vjp(expected)
    assert torch.allclose(result.x, expected, atol=1e-6)
    stale = x0 - s * vjp(x0) * 3  # reusing the gradient of x0 gives another point
    assert not torch.allclose(result.x, stale, atol=1e-3)


# --- plugins/samplers/informative.py --------------------------------------------------------------


def _two_class_gaussians(**kwargs):
    """Class 0 around -0.5, class 1 around +0.5 (std 0.01) in 3 dimensions."""
    from jemkit_plugins.samplers.informative import ClassGaussians

    mean = torch.tensor([[-0.5] * 3, [0.5] * 3])
    return ClassGaussians(mean, torch.eye(3).expand(2, 3, 3) * 0.01, torch.tensor([30, 10]), (3,), 1e-4, **kwargs)


def test_class_gaussians_clamp_to_minus_one_one_by_default():
    from jemkit_plugins.samplers.informative import ClassGaussians

    torch.manual_seed(0)
    wide = ClassGaussians(torch.zeros(1, 3), torch.eye(3).expand(1, 3, 3) * 3.0, torch.tensor([5]), (3,), 1e-4)
    x = wide.sample(torch.zeros(2000, dtype=torch.long))
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert float(x.mean()) == pytest.approx(0.0, abs=0.05)


def test_an_informative_buffer_reinitialises_from_the_asked_class_or_a_random_one():
    from jemkit_plugins.samplers.informative import InformativeBuffer

    torch.manual_seed(0)
    buffer = InformativeBuffer(_two_class_gaussians(), size=50, reinit_freq=1.0)
    asked = buffer.start(40, torch.ones(40, dtype=torch.long), torch.device("cpu"))
    assert torch.allclose(asked.x, torch.full((40, 3), 0.5), atol=0.05)  # every chain from class 1
    free = buffer.start(400, None, torch.device("cpu"))
    near_one = (free.x.mean(1) > 0).float().mean()
    assert float(near_one) == pytest.approx(0.25, abs=0.06)  # class 1 has 10 of the 40 examples
    assert free.reinit_fraction == 1.0


def test_informative_buffer_reinit_freq_bounds():
    from jemkit_plugins.samplers.informative import InformativeBufferParams

    for ok in (0.0, 1.0):
        assert InformativeBufferParams(reinit_freq=ok).reinit_freq == ok
    for bad in (-0.01, 1.01):
        with pytest.raises(ValueError, match="probability"):
            InformativeBufferParams(reinit_freq=bad)


def test_load_or_fit_needs_the_class_count_and_keeps_minus_one_one_by_default(tmp_path):
    from jemkit.testing import tiny_context
    from jemkit_plugins.samplers.informative import load_fit, load_or_fit

    context = tiny_context(input_shape=(2,), num_classes=2, run_dir=tmp_path)
    fit = load_or_fit(context, eps=1e-2)
    assert (fit.low, fit.high, fit.loaded_from_cache) == (-1.0, 1.0, False)
    fit.write_cache()
    again = load_or_fit(context, eps=1e-2)
    assert (again.low, again.high, again.loaded_from_cache) == (-1.0, 1.0, True)
    expected = {"informative.eps": repr(1e-2), "informative.shape": "[2]", "informative.num_classes": "2",
                "informative.num_examples": "40"}
    direct = load_fit(tmp_path / "informative_init.safetensors", expected)
    assert (direct.low, direct.high) == (-1.0, 1.0)
    with pytest.raises(ValueError, match="training data"):
        load_or_fit(tiny_context(input_shape=(2,), num_classes=0), eps=1e-2)


def test_the_informative_initialisers_are_registered(plugins):
    from jemkit_plugins.samplers.informative import build_informative, build_informative_buffer

    registry = plugins.registries["chain_init"]
    assert registry.get("informative").factory is build_informative
    assert registry.get("informative_buffer").factory is build_informative_buffer


# --- jemkit/config.py -----------------------------------------------------------------------------


def test_read_run_config_tells_a_file_from_a_missing_directory(tmp_path):
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"x")
    with pytest.raises(JemkitError, match="is a file, not a run directory"):
        read_run_config(a_file)
    with pytest.raises(JemkitError, match="does not exist"):
        read_run_config(tmp_path / "no_such_run")


def test_change_records_an_absent_side_as_none():
    assert Change("train.epochs", 1, 2).as_record() == {"key": "train.epochs", "old": 1, "new": 2}
    assert Change("loggers", UNSET, ["csv"]).as_record() == {"key": "loggers", "old": None, "new": ["csv"]}
    assert Change("train.max_steps", 5, UNSET).as_record() == {"key": "train.max_steps", "old": 5, "new": None}


def test_train_defaults_log_every_ten_steps():
    assert TrainParams().log_every == 10


def test_recipe_changes_lists_each_changed_leaf_by_its_dotted_key():
    stored = OmegaConf.create({"seed": 1, "train": {"epochs": 1, "lr": 0.5}, "extra": {}})
    merged = OmegaConf.create({"seed": 1, "train": {"epochs": 3, "lr": 0.1}, "loggers": ["csv"]})
    changes = recipe_changes(stored, merged)
    # `extra: {}` (an empty section) that the merged recipe lacks is not a change.
    assert changes == [
        Change("loggers", UNSET, ["csv"]),
        Change("train.epochs", 1, 3),
        Change("train.lr", 0.5, 0.1),
    ]
    assert recipe_changes(stored, stored) == []


def test_fixed_reason_covers_a_key_and_the_keys_under_it_only():
    assert fixed_reason("seed") is not None
    assert fixed_reason("data.name") is not None
    assert fixed_reason("sampler.init.buffer_size") is not None
    assert fixed_reason("train.batch_size") is not None
    assert fixed_reason("train.epochs") is None
    assert fixed_reason("sampler.steps") is None
    assert fixed_reason("dataset") is None  # a prefix of the text, not of the dotted path


def test_check_interpolations_resolves_every_reference():
    check_interpolations(OmegaConf.create({"a": 3, "b": "${a}"}))
    with pytest.raises(JemkitError, match="b"):
        check_interpolations(OmegaConf.create({"a": 3, "b": "${nope}"}))


def test_switching_a_components_name_warns_of_every_dropped_key(caplog):
    cfg = OmegaConf.create({"sampler": {"transition": {"name": "langevin", "alpha": 1, "zeta": 2}}})
    with caplog.at_level(logging.WARNING, logger="jemkit.config"):
        merged = apply_overrides(cfg, ["sampler.transition.name=mala"])
    assert OmegaConf.to_container(merged) == {"sampler": {"transition": {"name": "mala"}}}
    assert "alpha, zeta are dropped" in caplog.text


def test_to_yaml_keeps_environment_values_as_interpolations_and_resolves_the_rest(monkeypatch):
    monkeypatch.setenv("JEMKIT_MUT_ROOT", "/secret/data")
    cfg = OmegaConf.create(
        {
            "root": "${oc.env:JEMKIT_MUT_ROOT}",
            "cache": "${oc.env:JEMKIT_MUT_ROOT}/cache",
            "nested": "${oc.env:JEMKIT_MUT_UNSET,${epochs}}",
            "epochs": 4,
            "twice": "${epochs}",
            "dims": ["${oc.env:JEMKIT_MUT_ROOT}", 1, 2, 3],
            "same": "${dims}",  # 6 characters; the list it names has 4 entries
            "four": "${a}",  # 4 characters, like the list
            "a": ["${oc.env:JEMKIT_MUT_ROOT}", 1, 2, 3],
        }
    )
    out = OmegaConf.to_container(OmegaConf.create(to_yaml(cfg)))
    assert "/secret/data" not in to_yaml(cfg)
    assert out["root"] == "${oc.env:JEMKIT_MUT_ROOT}"
    assert out["cache"] == "${oc.env:JEMKIT_MUT_ROOT}/cache"
    assert out["nested"] == "${oc.env:JEMKIT_MUT_UNSET,${epochs}}"
    assert out["twice"] == 4
    assert out["dims"] == ["${oc.env:JEMKIT_MUT_ROOT}", 1, 2, 3]
    assert out["same"] == "${dims}"
    assert out["four"] == "${a}"


# --- jemkit/sampler.py: the CUDA-graph branch, driven on the CPU ------------------------------------


class _RecordingGraphCache:
    """Stands in for ChainGraphCache: records that a replay was asked for and runs the loop eagerly."""

    def __init__(self) -> None:
        self.runs = 0

    def run(self, key, model, x, y, body):
        self.runs += 1
        return body(x, y)()


@pytest.mark.parametrize("cache, applies, replays", [(None, True, 0), ("cache", False, 0), ("cache", True, 1)])
def test_a_graph_is_replayed_only_with_a_cache_where_graphs_apply(monkeypatch, cache, applies, replays):
    """sampler.py L134: both conditions are needed (`and`); CUDA graphs apply only on CUDA, so the
    test makes `graphs_apply` answer as it would there."""
    import jemkit.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "graphs_apply", lambda transition, x, steps: applies)
    graph_cache = _RecordingGraphCache() if cache else None
    x = torch.zeros(3, 1, 8, 8)
    out = sampler_module.run_chains(tiny_model(), _GradientStep(), x, None, 2, graph_cache=graph_cache)
    assert out.x.shape == x.shape and torch.isfinite(out.x).all()
    assert (graph_cache.runs if graph_cache else 0) == replays


def test_cuda_graphs_are_off_unless_asked_for():
    """sampler.py L153: a Sampler replays CUDA graphs only when built with cuda_graphs=True (the
    recipe's `performance.cuda_graphs`); the default is the eager loop."""
    assert Sampler(_MemorylessInit(), _GradientStep(), steps=1).cuda_graphs is False
    assert Sampler(_MemorylessInit(), _GradientStep(), steps=1, cuda_graphs=True).cuda_graphs is True


@pytest.mark.parametrize("on_device, expected", [(False, "cpu"), (True, "cuda")])
def test_the_informative_buffer_lives_on_the_training_device_only_when_asked(monkeypatch, on_device, expected):
    """informative.py L353: `on_device` puts the JEM++ buffer on the training device (here a CUDA
    device named, never touched: the buffer's constructor is recorded, not run), else the CPU."""
    from types import SimpleNamespace

    from jemkit_plugins.samplers import informative

    built = {}
    monkeypatch.setattr(informative, "load_or_fit", lambda context, eps, cache, low, high: "gaussians")
    monkeypatch.setattr(informative, "InformativeBuffer", lambda *args: built.setdefault("device", args[-1]))
    params = informative.InformativeBufferParams(on_device=on_device)
    informative.build_informative_buffer(params, SimpleNamespace(device=torch.device("cuda", 0)))
    assert torch.device(built["device"]).type == expected
