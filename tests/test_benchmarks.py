"""The step-cost benchmark (benchmarks/step_cost.py) runs end to end on a tiny digits JEM."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch

from conftest import RECIPES, ROOT

TINY = [
    "model.backbone.channels=[8,16]",
    "model.backbone.feature_dim=16",
    "sampler.steps=2",
    "sampler.init.size=200",
    "train.batch_size=8",
]


def _load_step_cost():
    """Import benchmarks/step_cost.py (benchmarks/ is a folder of scripts, not a package)."""
    name = "jemkit_benchmark_step_cost"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "step_cost.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look the module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_measure_tiny_digits():
    step_cost = _load_step_cost()
    threads_before = torch.get_num_threads()
    # One thread: two OpenMP threads on a 2-core machine shared with other work stall each other.
    result = step_cost.measure(
        RECIPES / "jem_digits.yaml", TINY, repeats=5, warmup=1, iters=2, device="cpu", threads=1
    )
    assert torch.get_num_threads() == threads_before  # measure restores the thread setting

    for name in step_cost.TIMINGS:
        value = result[f"{name}_ms"]
        assert math.isfinite(value) and value > 0, (name, value)
        assert len(result["timings"][name]["runs_ms"]) == 5
    assert result["K"] == 2
    assert result["sampler_calls"] == 1 and result["chains_per_call"] == 8
    assert result["batch_size"] == 8 and result["input_shape"] == [1, 8, 8]
    assert result["device"] == "cpu" and result["threads"] == 1
    assert result["ratio_jem_plain"] > 1
    assert result["floor_ms"] == result["K"] * result["sampler_step_ms"] + result["update_ms"]
    assert math.isfinite(result["ratio_jem_floor"]) and result["ratio_jem_floor"] > 0
    assert result["peak_memory_mib"] > 0

    json.dumps(result, allow_nan=False)  # what --json writes
    table = step_cost.format_report(result)
    assert "ratio JEM / plain" in table and "K (sampler.steps)" in table


def test_measure_levers_covers_every_lever(tmp_path):
    step_cost = _load_step_cost()
    out = tmp_path / "levers.json"
    results = step_cost.measure_levers(
        RECIPES / "jem_digits.yaml", TINY, repeats=1, warmup=0, iters=1, threads=1, json_path=out
    )
    assert [r["lever"] for r in results] == [label for label, _ in step_cost.LEVERS]
    assert all(r["jem_iteration_ms"] > 0 for r in results)
    assert [r["lever"] for r in json.loads(out.read_text())] == [r["lever"] for r in results]
    table = step_cost.format_levers(results)
    assert "fused forward" in table and "1.00x" in table
    projected = step_cost.format_levers(results, epochs=150, train_size=45000)
    assert "h/150 ep" in projected and "it/s" in projected


def test_projection_and_cuda_lever_list():
    step_cost = _load_step_cost()
    # 45000 // 64 = 703 iterations per epoch; 150 epochs at 100 ms each = 2.93 hours
    assert step_cost.projected_hours(100.0, 150, 45000, 64) == pytest.approx(150 * 703 * 0.1 / 3600)
    assert step_cost.projected_hours(136.5, 150, 45000, 64) == pytest.approx(4.0, rel=0.001)
    cpu = step_cost.lever_configurations("cpu", with_compile=False)
    cuda = step_cost.lever_configurations("cuda", with_compile=True)
    assert cpu == list(step_cost.LEVERS)
    labels = [label for label, _ in cuda]
    assert "CUDA graphs (K-step sampler loop)" in labels and labels[-1].startswith("fast + compile")
    assert labels[0].startswith("reference") and labels[1] == step_cost.DEVICE_LEVERS[0][0]  # GPU levers early
    assert sorted(labels) == sorted(
        [label for label, _ in (*step_cost.LEVERS, step_cost.COMPILE_LEVER, *step_cost.DEVICE_LEVERS,
                                *step_cost.DEVICE_COMPILE_LEVERS)]
    )
    chosen = step_cost.lever_configurations("cuda", with_compile=True, only=["reference", "COMPILE"])
    assert [label for label, _ in chosen][0].startswith("reference") and len(chosen) == 4
    with pytest.raises(ValueError, match="no lever configuration"):
        step_cost.lever_configurations("cpu", with_compile=False, only=["nothing like this"])
    # every CUDA configuration is a valid performance section (no nesting of two graph mechanisms)
    from jemkit.performance import PerformanceParams

    for _, overrides in cuda:
        section = {k.split(".")[1]: v for k, v in (o.split("=") for o in overrides) if k.startswith("performance.")}
        PerformanceParams(**{k: v == "true" if v in ("true", "false") else v for k, v in section.items()})


def test_every_part_is_timed_under_the_settled_precision_and_the_reference_loop_in_fp32():
    """Under bf16 + channels_last every convolution and linear call runs under autocast except the
    reference-style loop's: (K sampler steps + 3 forward passes) x 4 layers per reference iteration."""
    step_cost = _load_step_cost()
    seen = {True: 0, False: 0}

    def record(module, inputs):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            seen[torch.is_autocast_enabled("cpu")] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        result = step_cost.measure(
            RECIPES / "jem_digits.yaml", [*TINY, "performance.autocast=bf16", "performance.channels_last=true"],
            repeats=2, warmup=1, iters=1, device="cpu", threads=1,
        )
    finally:
        handle.remove()
    reference_iterations = 1 + 2 * 1  # warm-up + repeats x iters
    assert seen[False] == reference_iterations * (result["K"] + 3) * 4
    assert seen[True] > seen[False]
    assert result["precision"]["choice"] == "bf16+channels_last" and result["precision"]["source"] == "recipe"
    assert result["ratio_reference_jem"] == result["reference_iteration_ms"] / result["jem_iteration_ms"]
    assert result["cpu_capability"] and isinstance(result["cpu_bf16_flags"], list)
    assert "reference-style / JEM" in step_cost.format_report(result)


def test_reference_style_loop_uses_two_batches_three_passes_and_trainable_weights():
    step_cost = _load_step_cost()
    from jemkit.contracts import Backbone, JointEnergyModel
    from jemkit_plugins.models.heads import LinearHead

    class Flat(Backbone):
        def __init__(self):
            super().__init__()
            self.feature_dim = 4
            self.fc = torch.nn.Linear(64, 4)

        def forward(self, x):
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    model = JointEnergyModel(Flat(), LinearHead(4, 10))
    calls: list[tuple[int, bool, bool]] = []  # (batch size, training, weights trainable)
    model.register_forward_pre_hook(
        lambda m, inputs: calls.append((inputs[0].shape[0], m.training, all(p.requires_grad for p in m.parameters())))
    )
    before = [p.detach().clone() for p in model.parameters()]
    loop = step_cost.PlainJEM(
        model, torch.optim.SGD(model.parameters(), lr=0.1), (1, 8, 8), steps=3, buffer_size=50, reinit_freq=0.0
    )
    buffer = loop.buffer.clone()
    x_data, x_lab = torch.rand(6, 1, 8, 8), torch.rand(5, 1, 8, 8)
    loss = loop.iteration(x_data, x_lab, torch.arange(5))
    assert math.isfinite(loss)
    # 3 SGLD steps in eval mode, then p(x) on data and samples, then p(y|x) on the other batch
    assert calls == [(6, False, True)] * 3 + [(6, True, True), (6, True, True), (5, True, True)]
    assert (loop.buffer != buffer).any(dim=(1, 2, 3)).sum() >= 1  # final chains written back
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_lever_rounds_take_turns_and_keep_the_median_round():
    step_cost = _load_step_cost()
    results = step_cost.measure_levers(
        RECIPES / "jem_digits.yaml", TINY, only=["reference", "auto: "], rounds=3, repeats=1, warmup=0, iters=1, threads=1
    )
    assert [r["lever"][:9] for r in results] == ["reference", "auto: pre"]
    for r in results:
        rounds = r["rounds_jem_iteration_ms"]
        assert len(rounds) == 3 and r["jem_iteration_ms"] == sorted(rounds)[1]
    assert "reference-style/JEM" in step_cost.format_levers(results)
    assert step_cost.lever_rows(results)[1]["reference-style/JEM"] == "-"  # timed with the first row only
    with pytest.raises(ValueError, match="rounds"):
        step_cost.measure_levers(RECIPES / "jem_digits.yaml", TINY, rounds=0)


#: Fixed phase timings (ms) for the floor test below, in place of measured ones.
FIXED_MS = {
    "jem_iteration": 12.0, "sampler_step": 1.5, "sampler_call": 3.5, "update": 4.0,
    "plain_iteration": 3.0, "optimizer_step": 0.5, "reference_iteration": 30.0,
}


@pytest.mark.parametrize(
    "extra, calls, k, floor",
    [
        # one sampler call (p(x)) of K=2 steps: 1 x 2 x 1.5 + 4.0 = 7.0 ms
        ([], 1, 2, 7.0),
        # loss.pxy adds a class-conditional call, K=3: 2 x 3 x 1.5 + 4.0 = 13.0 ms
        (["loss.pxy=1.0", "sampler.steps=3"], 2, 3, 13.0),
    ],
)
def test_floor_and_ratios_by_hand_from_fixed_timings(monkeypatch, extra, calls, k, floor):
    """``floor = sampler calls x K x sampler step + update`` (the module docstring), worked out by
    hand from fixed timings, not with the code's own formula."""
    step_cost = _load_step_cost()

    def fixed(phases, *, repeats, warmup, iters, sync):
        return {
            name: {"median_ms": FIXED_MS[name], "min_ms": FIXED_MS[name], "max_ms": FIXED_MS[name],
                   "runs_ms": [FIXED_MS[name]] * repeats}
            for name in phases
        }

    monkeypatch.setattr(step_cost, "time_phases", fixed)
    result = step_cost.measure(
        RECIPES / "jem_digits.yaml", [*TINY, *extra], repeats=1, warmup=0, iters=1, device="cpu", threads=1
    )
    assert (result["sampler_calls"], result["K"]) == (calls, k)
    assert result["floor_ms"] == pytest.approx(floor)
    assert result["ratio_jem_floor"] == pytest.approx(12.0 / floor)
    assert result["ratio_jem_plain"] == pytest.approx(4.0)  # 12.0 / 3.0
    if "ratio_reference_jem" in result:
        assert result["ratio_reference_jem"] == pytest.approx(2.5)  # 30.0 / 12.0
