"""``performance.autocast: auto`` / ``channels_last: auto``: candidates, timing, agreement, the choice,
its record in a run, resume, and fp32 chains under bf16 (:mod:`jemkit.precision`).

Timings come from an injected clock, so every choice here is the same on any CPU: a global
forward pre-hook charges each convolution and linear layer a fixed number of fake milliseconds
depending on whether autocast is on and whether the layer's weights are channels_last.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn

from jemkit import precision
from jemkit.config import load_recipe
from jemkit.contracts import Backbone, EnergyHead, JointEnergyModel
from jemkit.errors import RecipeError
from jemkit.performance import PerformanceParams, apply_precision, autocast, prepare_input
from jemkit.plugin_manager import load_plugins
from jemkit.precision import Agreement, Candidate, Measured
from jemkit.runlog import read_metrics
from jemkit.sampler import Sampler
from jemkit.train import Trainer
from jemkit_plugins.samplers.mcmc import MALA
from jemkit_plugins.samplers.sampling import SGLD

from conftest import RECIPES, TINY_DIGITS, run_cli
from test_mcmc import EXACT_GAUSSIAN, MU, N_CHAINS, PRECISION, SIGMA, _start, assert_moments_match

PLUGINS = load_plugins(entry_points=False)
CPU = torch.device("cpu")
AUTO = PerformanceParams(autocast="auto", channels_last="auto")

pytestmark = pytest.mark.usefixtures("one_thread")

#: Fake milliseconds per convolution / linear call: (autocast on, channels_last weights) -> ms.
#: bf16 + channels_last is the cheapest; fp32 channels_last is only 5 % cheaper than NCHW.
FAVOUR_BF16 = {(False, False): 10.0, (False, True): 9.5, (True, False): 5.0, (True, True): 1.0}
#: The opposite machine: bf16 is 4x slower (no bf16 units); channels_last pays off in fp32.
FAVOUR_FP32 = {(False, False): 10.0, (False, True): 1.0, (True, False): 40.0, (True, True): 40.0}


class FakeCosts:
    """A fake clock advanced by every convolution and linear call (see the module docstring)."""

    def __init__(self, costs: dict[tuple[bool, bool], float]) -> None:
        self.costs = costs
        self.now = 0.0
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def charge(self, module: nn.Module, inputs) -> None:
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            return
        weight = module.weight
        channels_last = (
            weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        )
        self.now += self.costs[(torch.is_autocast_enabled("cpu"), channels_last)] / 1000.0
        self.calls += 1


@pytest.fixture
def fake_costs(monkeypatch):
    """Install a :class:`FakeCosts` (FAVOUR_BF16 by default; set ``.costs`` to change) as the clock of
    :mod:`jemkit.precision`, with bf16 available whatever this CPU has, and every candidate tried
    (the tiny test network is far below :data:`~jemkit.precision.MIN_FORWARD_MACS`)."""
    fake = FakeCosts(dict(FAVOUR_BF16))
    monkeypatch.setattr(precision, "default_clock", fake.clock)
    monkeypatch.setattr(precision, "bf16_support", lambda device: (True, "assumed by the test"))
    monkeypatch.setattr(precision, "MIN_FORWARD_MACS", 0)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(fake.charge)
    yield fake
    handle.remove()


def _tiny_trainer(tmp_path, *extra: str) -> Trainer:
    return Trainer(PLUGINS, load_recipe(RECIPES / "jem_digits.yaml", [*TINY_DIGITS, *extra]), tmp_path)


# --------------------------------------------------------------------------- settings


def test_auto_is_a_value_of_both_settings_and_means_fp32_nchw_until_settled():
    params = PerformanceParams(autocast="auto", channels_last="auto")
    assert not params.settled
    assert PerformanceParams(channels_last="true").channels_last is True
    assert PerformanceParams(channels_last="False").channels_last is False
    assert PerformanceParams(channels_last=True, autocast="bf16").settled
    for bad in ({"channels_last": "yes"}, {"autocast": "fp8"}):
        with pytest.raises(ValueError, match="must be"):
            PerformanceParams(**bad)
    x = torch.rand(2, 3, 4, 4)
    assert prepare_input(x, params).is_contiguous()  # unsettled auto: NCHW
    with autocast(CPU, params):
        assert not torch.is_autocast_enabled("cpu")  # unsettled auto: fp32
    settled = params.with_precision("bf16", True)
    assert settled.autocast == "bf16" and settled.channels_last is True and params.autocast == "auto"


def test_a_bad_channels_last_value_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="channels_last must be true, false or auto"):
        _tiny_trainer(tmp_path, "performance.channels_last=sometimes")


def test_candidates_enumerate_the_auto_settings_simplest_first(monkeypatch):
    monkeypatch.setattr(precision, "bf16_support", lambda device: (True, "test"))
    auto = PerformanceParams(autocast="auto", channels_last="auto")
    labels = lambda params, image=True: [c.label for c in precision.candidates(params, CPU, image)]  # noqa: E731
    assert labels(auto) == ["fp32", "fp32+channels_last", "bf16", "bf16+channels_last"]
    assert labels(auto, image=False) == ["fp32", "bf16"]  # channels_last only for 4-D inputs
    assert labels(PerformanceParams(autocast="none", channels_last="auto")) == ["fp32", "fp32+channels_last"]
    fixed_layout = PerformanceParams(autocast="auto", channels_last=True)
    assert labels(fixed_layout) == ["fp32+channels_last", "bf16+channels_last"]
    monkeypatch.setattr(precision, "bf16_support", lambda device: (False, "test"))
    assert labels(auto) == ["fp32", "fp32+channels_last"]  # no bf16 where the device lacks it


# --------------------------------------------------------------------------- agreement and choice


def test_agreement_is_the_stated_relative_error():
    reference = (torch.tensor([2.0, -4.0]), torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    close = (torch.tensor([2.02, -4.0]), torch.tensor([[3.0, 4.5], [0.0, 0.0]]))
    check = precision.agreement(reference, close)
    assert check.energy_error == pytest.approx(0.02 / 4.0)  # max |dE| / max(1, max |E|)
    assert check.grad_error == pytest.approx(0.5 / 5.0)  # ||dG|| / ||G||
    assert check.passed
    small = precision.agreement((torch.tensor([0.1]), torch.ones(1, 1)), (torch.tensor([0.13]), torch.ones(1, 1)))
    assert small.energy_error == pytest.approx(0.03)  # scale floor of one nat
    assert not small.passed and small.energy_error > precision.ENERGY_TOLERANCE
    far = (torch.tensor([2.0, -4.0]), torch.tensor([[3.0, 5.0], [0.0, 0.0]]))  # gradient error 0.2
    assert not precision.agreement(reference, far).passed
    assert not Agreement(float("nan"), 0.0).passed


def _measured(label: str, estimate: float, passed: bool = True) -> Measured:
    autocast_type, _, layout = label.partition("+")
    check = Agreement(0.0, 0.0 if passed else 1.0) if autocast_type == "bf16" else None
    candidate = Candidate("none" if autocast_type == "fp32" else autocast_type, bool(layout))
    return Measured(candidate, estimate, 0.0, estimate, check)


def test_choose_takes_the_fastest_that_agrees_and_pays_for_the_change():
    choose = lambda *items: precision.choose([_measured(*item) for item in items]).label  # noqa: E731
    four = (("fp32", 100), ("fp32+channels_last", 80), ("bf16", 50), ("bf16+channels_last", 30))
    assert choose(*four) == "bf16+channels_last"
    # 5 % faster is within noise: the simpler setting stays
    assert choose(("fp32", 100), ("fp32+channels_last", 95)) == "fp32"
    assert choose(("fp32", 100), ("fp32+channels_last", 80), ("bf16", 75)) == "fp32+channels_last"
    # bf16 that disagrees with fp32 is out however fast it is
    assert choose(("fp32", 100), ("bf16", 10, False), ("bf16+channels_last", 5, False)) == "fp32"
    with pytest.raises(ValueError):
        precision.choose([])


class _FakeWork:
    def __init__(self, clock: FakeCosts, grad_ms: float, update_ms: float, outputs: tuple[Tensor, Tensor]) -> None:
        self.clock, self.grad_ms, self.update_ms, self.outputs = clock, grad_ms, update_ms, outputs
        self.calls = 0

    def energy_grad(self):
        self.calls += 1
        # the first call (the warm-up) pays a one-time cost that must not be counted
        self.clock.now += (self.grad_ms + (500.0 if self.calls == 1 else 0.0)) / 1000.0
        return self.outputs

    def update(self):
        self.clock.now += self.update_ms / 1000.0


def test_time_candidates_with_an_injected_clock():
    clock = FakeCosts({})
    energies, grads = torch.tensor([1.0, -2.0]), torch.ones(2, 3)
    plan = {
        "fp32": (20.0, 40.0, (energies, grads)),
        "fp32+channels_last": (200.0, 40.0, (energies, grads)),  # 10x slower: given up after one timed call
        "bf16": (10.0, 20.0, (energies + 0.01, grads * 1.05)),
        "bf16+channels_last": (5.0, 10.0, (energies, grads * 2.0)),  # disagrees: gradient error 1.0
    }
    works: dict[str, _FakeWork] = {}

    def make_work(candidate: Candidate) -> _FakeWork:
        works[candidate.label] = _FakeWork(clock, *plan[candidate.label])
        return works[candidate.label]

    todo = [Candidate(a, c) for a in ("none", "bf16") for c in (False, True)]
    measured = precision.time_candidates(todo, make_work, steps=10, clock=clock.clock, repeats=3)
    by_label = {m.candidate.label: m for m in measured}
    assert by_label["fp32"].energy_grad_ms == pytest.approx(20.0) and by_label["fp32"].update_ms == pytest.approx(40.0)
    assert by_label["fp32"].estimate_ms == pytest.approx(10 * 20.0 + 40.0)
    assert works["fp32"].calls == 1 + 3  # warm-up + repeats
    assert not by_label["fp32+channels_last"].complete and works["fp32+channels_last"].calls == 2
    assert by_label["bf16"].agreement.energy_error == pytest.approx(0.01 / 2.0, rel=1e-5)
    assert by_label["bf16"].agreement.grad_error == pytest.approx(0.05, rel=1e-5)  # float32 arithmetic
    assert by_label["fp32"].agreement is None  # fp32 is the reference
    assert not by_label["bf16+channels_last"].passed and works["bf16+channels_last"].calls == 2
    assert precision.choose(measured).label == "bf16"
    # cheap candidates get up to `repeats` timed calls, expensive ones stop at the time budget
    works.clear()
    precision.time_candidates(todo[:1], make_work, steps=10, clock=clock.clock, repeats=5, budget_s=0.1)
    assert works["fp32"].calls == 1 + 2  # 60 ms per timed call: the second one passes 0.1 s


def test_forward_macs_counts_convolutions_and_linear_layers(tmp_path):
    model = _tiny_trainer(tmp_path).model
    x = torch.rand(16, 1, 8, 8)
    # conv 1->8 (3x3) on 8x8, conv 8->16 (3x3, stride 2) to 4x4, linear 16->16, head 16->10
    expected = 16 * (8 * 8 * 8 * 1 * 9 + 16 * 4 * 4 * 8 * 9 + 16 * 16 + 10 * 16)
    assert precision.forward_macs(model, x) == expected == 375_296
    assert model.training  # the count runs in eval mode and restores the mode


# --------------------------------------------------------------------------- on a real model


def test_choose_precision_times_copies_and_leaves_the_model_and_rng_alone(tmp_path, fake_costs):
    trainer = _tiny_trainer(tmp_path)
    model = trainer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    y = torch.arange(16) % 10
    torch.manual_seed(11)
    expected_draw = torch.rand(3)
    torch.manual_seed(11)
    auto = PerformanceParams(autocast="auto", channels_last="auto")
    choice = precision.choose_precision(model, x, y, auto, steps=20)
    assert torch.equal(torch.rand(3), expected_draw)  # the global RNG stream is untouched
    assert choice.label == "bf16+channels_last" and choice.source == "timed"
    # The tiny digits convnet makes four charged calls per forward pass: the first convolution
    # (one input channel: its weights read as NCHW in either layout), the second convolution and
    # two linear layers. The input gradient and the update each take one forward pass, so a
    # candidate's estimate is (20 + 1) passes.
    assert [type(m).__name__ for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == [
        "Conv2d", "Conv2d", "Linear", "Linear"]
    for m in choice.measured:
        low = m.candidate.autocast == "bf16"
        per_pass = 3 * FAVOUR_BF16[(low, False)] + FAVOUR_BF16[(low, m.candidate.channels_last)]
        assert m.energy_grad_ms == pytest.approx(per_pass) and m.update_ms == pytest.approx(per_pass)
        assert m.estimate_ms == pytest.approx(21 * per_pass)
        if m.candidate.autocast == "bf16":
            assert m.agreement is not None and m.agreement.passed
            assert 0 < m.agreement.grad_error < precision.GRAD_TOLERANCE
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.backbone.first_layer.weight.is_contiguous()
    assert not hasattr(model, "_jemkit_fp32_outputs")
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_bf16_that_disagrees_with_fp32_is_not_chosen(tmp_path, fake_costs, monkeypatch):
    monkeypatch.setattr(precision, "GRAD_TOLERANCE", 1e-9)
    trainer = _tiny_trainer(tmp_path)
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10
    choice = precision.choose_precision(trainer.model, x, y, AUTO, steps=20)
    assert choice.autocast == "none"
    assert [m.passed for m in choice.measured] == [True, True, False, False]


def test_explicit_values_win_over_timing(tmp_path, fake_costs):
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10
    model = _tiny_trainer(tmp_path).model
    fake_costs.costs = dict(FAVOUR_FP32)
    layout_only = precision.choose_precision(
        model, x, y, PerformanceParams(autocast="none", channels_last="auto"), steps=20
    )
    assert layout_only.label == "fp32+channels_last" and len(layout_only.measured) == 2
    fake_costs.costs = dict(FAVOUR_BF16)
    fixed = precision.choose_precision(model, x, y, PerformanceParams(autocast="none", channels_last=False), steps=20)
    assert fixed.label == "fp32" and fixed.source == "recipe" and fixed.measured == []


def test_without_bf16_units_auto_picks_fp32(tmp_path, fake_costs):
    """Where bf16 is 4x slower (emulated), auto stays in fp32, here with the faster layout."""
    fake_costs.costs = dict(FAVOUR_FP32)
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10
    choice = precision.choose_precision(
        _tiny_trainer(tmp_path).model, x, y, PerformanceParams(autocast="auto", channels_last="auto"), steps=20
    )
    assert choice.label == "fp32+channels_last"
    assert {m.candidate.label: m.complete for m in choice.measured}["bf16+channels_last"] is False  # given up


def test_tiny_networks_keep_fp32_whatever_the_timings(tmp_path, fake_costs, monkeypatch):
    """Under MIN_FORWARD_MACS only the simplest candidate is kept: the test suite's tiny runs make
    the same choice on every run, however loaded the machine."""
    monkeypatch.setattr(precision, "MIN_FORWARD_MACS", 10_000_000)
    trainer = _tiny_trainer(tmp_path)
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10
    choice = precision.choose_precision(trainer.model, x, y, AUTO, steps=2)
    assert choice.label == "fp32" and [m.candidate.label for m in choice.measured] == ["fp32"]
    assert choice.forward_macs == 375_296 < precision.MIN_FORWARD_MACS


# --------------------------------------------------------------------------- in a run


def _precision_events(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "precision"]


def test_a_run_records_its_choice_trains_with_it_and_keeps_it_on_resume(tmp_path, fake_costs):
    out = tmp_path / "run"
    trainer = _tiny_trainer(out)
    assert trainer.experiment.performance.autocast == "auto"  # the shipped recipe asks for auto
    trainer.prepare_run_dir()
    summary = trainer.fit()
    assert trainer.experiment.performance.autocast == "bf16" and trainer.experiment.performance.channels_last is True
    conv = trainer.model.backbone.features[2].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert summary["precision"] == "bf16+channels_last" and summary["precision/source"] == "timed"
    estimates = {k: v for k, v in summary.items() if k.startswith("precision/") and k.endswith("_ms")}
    assert set(estimates) == {f"precision/{c}_ms" for c in ("fp32", "fp32+channels_last", "bf16", "bf16+channels_last")}
    assert estimates["precision/bf16+channels_last_ms"] < estimates["precision/fp32_ms"]
    written = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in written.items() if k.startswith("precision")} == {
        k: v for k, v in summary.items() if k.startswith("precision")}
    (event,) = _precision_events(out)
    assert event["step"] == 0 and event["choice"] == "bf16+channels_last"
    assert event["hardware"]["cpu_capability"] and "bf16_supported" in event["hardware"]
    assert [c["choice"] for c in event["candidates"]] == ["fp32", "fp32+channels_last", "bf16", "bf16+channels_last"]
    stored = json.loads((out / "precision.json").read_text())
    assert stored["choice"] == "bf16+channels_last" and stored["tolerance"]["grad"] == precision.GRAD_TOLERANCE
    # chains, buffer and checkpoints stay fp32
    from jemkit.checkpoint import list_checkpoints, load_checkpoint

    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).state
    assert state["sampler"]["buffer"].dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())

    # On resume the stored choice is kept, even where timing would now pick fp32.
    fake_costs.costs = dict(FAVOUR_FP32)
    result = run_cli("run", "--resume", out, "train.max_steps=5")
    assert result.code == 0, result.err
    again = json.loads((out / "summary.json").read_text())
    assert again["steps"] == 5 and again["precision"] == "bf16+channels_last"
    assert again["precision/source"] == "stored"
    assert [e["source"] for e in _precision_events(out)] == ["timed", "stored"]


def test_an_explicit_recipe_value_wins_in_a_run(tmp_path, fake_costs):
    out = tmp_path / "run"
    trainer = _tiny_trainer(out, "performance.autocast=none")
    trainer.prepare_run_dir()
    summary = trainer.fit()
    assert summary["precision"] == "fp32" and summary["precision/source"] == "timed"  # channels_last was auto
    assert [e["requested"]["autocast"] for e in _precision_events(out)] == ["none"]


# --------------------------------------------------------------------------- chains stay fp32


class _Affine(Backbone):
    """``z = L^T (x - mu)``: one linear layer (bf16 under autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_dim = 3
        self.linear = nn.Linear(3, 3)
        chol = torch.linalg.cholesky(PRECISION)  # P = L L^T
        with torch.no_grad():
            self.linear.weight.copy_(chol.T)
            self.linear.bias.copy_(-(chol.T @ MU))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class _HalfSquare(EnergyHead):
    """One class with logit ``-|z|^2 / 2``, so ``E(x) = (x - mu)^T P (x - mu) / 2``: the target N(MU, SIGMA)."""

    num_classes = 1

    def forward(self, features: Tensor) -> Tensor:
        return -0.5 * features.pow(2).sum(1, keepdim=True)


def _gaussian_network() -> JointEnergyModel:
    model = JointEnergyModel(_Affine(), _HalfSquare())
    return apply_precision(model, PerformanceParams(autocast="bf16"))  # outputs come back in fp32


@pytest.mark.parametrize(
    ("transition", "steps", "seed"), [(MALA(step_size=0.1), 250, 21), (SGLD(0.01, math.sqrt(0.02)), 1000, 22)],
    ids=["mala", "langevin"],
)
def test_sampler_statistics_hold_with_the_network_in_bf16(transition, steps, seed):
    """The Gaussian's energy goes through a bf16 linear layer; the chains still match its moments."""
    model = _gaussian_network()
    with autocast(CPU, PerformanceParams(autocast="bf16")):
        z = model.backbone(torch.zeros(1, 3))
        assert z.dtype == torch.bfloat16  # the network pass itself runs in bf16
        torch.manual_seed(seed)
        x = _start(N_CHAINS, 3, seed)
        for _ in range(steps):
            result = transition.step(x, model.energy)
            assert result.x.dtype == torch.float32 and result.energy.dtype == torch.float32
            x = result.x
    # Langevin's O(eps) covariance bias (+0.005 on the diagonal at eps = 0.01) is a fraction of a
    # standard error of the check (0.02-0.05 with 3000 chains).
    assert_moments_match(x, EXACT_GAUSSIAN, MU, MU, SIGMA)


def test_replay_buffer_chains_and_diagnostics_stay_fp32_under_bf16(tmp_path):
    trainer = _tiny_trainer(tmp_path)
    sampler: Sampler = trainer.sampler
    params = PerformanceParams(autocast="bf16", channels_last=True)
    apply_precision(trainer.model, params)
    with autocast(CPU, params):
        x = sampler.sample(trainer.model, 8)
    assert x.dtype == torch.float32 and sampler.init.buffer.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in sampler.last_diagnostic_tensors.values())
    with autocast(CPU, params):
        assert trainer.model(x).dtype == torch.float32  # logits back in fp32
        assert trainer.model.backbone(x).dtype == torch.bfloat16  # the network pass in bf16


# --------------------------------------------------------------------------- eval and sample


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("precision") / "run"
    result = run_cli("run", RECIPES / "jem_digits.yaml", "--out", out, *TINY_DIGITS)
    assert result.code == 0, result.err
    return out


def test_run_performance_fills_auto_from_the_stored_choice(trained_run, tmp_path):
    stored = json.loads((trained_run / "precision.json").read_text())
    assert stored["choice"] == "fp32"  # a tiny run: too cheap to change
    record = {**stored, "autocast": "bf16", "channels_last": True}
    (tmp_path / "precision.json").write_text(json.dumps(record))
    auto = PerformanceParams(autocast="auto", channels_last="auto")
    filled = precision.run_performance(tmp_path, auto)
    assert filled.autocast == "bf16" and filled.channels_last is True
    explicit = precision.run_performance(tmp_path, PerformanceParams(autocast="none", channels_last="auto"))
    assert explicit.autocast == "none" and explicit.channels_last is True
    nothing = precision.run_performance(tmp_path / "elsewhere", auto)
    assert nothing.autocast == "none" and nothing.channels_last is False


def _with_stored_choice(trained_run, tmp_path, autocast_type: str, channels_last: bool):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    record = json.loads((copy / "precision.json").read_text())
    changed = {**record, "autocast": autocast_type, "channels_last": channels_last}
    (copy / "precision.json").write_text(json.dumps(changed))
    return copy


@pytest.fixture
def autocast_seen():
    """Whether autocast was on at each convolution/linear call (a global forward pre-hook)."""
    seen: list[bool] = []

    def record(module, inputs):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            seen.append(torch.is_autocast_enabled("cpu"))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    yield seen
    handle.remove()


@pytest.mark.parametrize("autocast_type", ["bf16", "none"])
def test_jemkit_sample_uses_the_runs_precision(trained_run, tmp_path, autocast_seen, autocast_type):
    run = _with_stored_choice(trained_run, tmp_path, autocast_type, autocast_type == "bf16")
    result = run_cli("sample", run, "--out", tmp_path / "s.png", "--n", "4", "--steps", "2")
    assert result.code == 0, result.err
    assert autocast_seen and all(on == (autocast_type == "bf16") for on in autocast_seen)


def test_jemkit_eval_loads_the_runs_precision(trained_run, tmp_path):
    from jemkit.evaluation.rundir import load_run

    run_dir = _with_stored_choice(trained_run, tmp_path, "bf16", True)
    loaded, _ = load_run(PLUGINS, run_dir, "run", "last", CPU)
    assert loaded.performance.autocast == "bf16" and loaded.performance.channels_last is True
    assert loaded.model.backbone.features[2].weight.is_contiguous(memory_format=torch.channels_last)
    with autocast(CPU, loaded.performance):
        assert loaded.model(torch.rand(2, 1, 8, 8)).dtype == torch.float32
