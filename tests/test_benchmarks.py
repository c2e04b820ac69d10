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
