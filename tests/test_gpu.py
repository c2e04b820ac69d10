"""Checks that need a CUDA device: real CUDA graphs, bf16 on tensor cores, NCCL, a CUDA run.

Deselected by default (marker ``gpu``); ``benchmarks/gpu_check.sh`` runs them on a lent GPU with
``pytest -m gpu``. They skip when no CUDA device is visible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from jemkit.checkpoint import list_checkpoints, load_checkpoint
from jemkit.config import load_recipe
from jemkit.plugin_manager import load_plugins
from jemkit.sampler import Sampler
from jemkit.train import Trainer
from jemkit_plugins.samplers.sampling import SGLD, UniformNoise

from conftest import RECIPES, ROOT, TINY_DIGITS
from fakedata import write_fake_cifar10

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PLUGINS = load_plugins(entry_points=False)
CIFAR_TINY = [
    "model.backbone.depth=10", "model.backbone.widen_factor=2", "sampler.steps=5", "sampler.init.size=256",
    "data.val_size=0", "data.download=false", "train.batch_size=16", "train.max_steps=6",
    "train.samples_per_class=1", "train.log_every=1", "device=cuda",
]


def _cuda_model(tmp_path, *extra: str):
    overrides = ["model.backbone.channels=[16,32]", "model.backbone.feature_dim=32", "device=cuda", *extra]
    return Trainer(PLUGINS, load_recipe(RECIPES / "jem_digits.yaml", overrides), tmp_path).model


def _pair(noise: float = 0.0, steps: int = 6) -> tuple[Sampler, Sampler]:
    """An eager sampler and one that replays a real CUDA graph, otherwise identical."""
    eager = Sampler(UniformNoise((1, 8, 8)), SGLD(1.0, noise), steps=steps)
    graphed = Sampler(UniformNoise((1, 8, 8)), SGLD(1.0, noise), steps=steps, cuda_graphs=True)
    return eager, graphed


def test_cuda_graph_replay_matches_the_eager_loop(tmp_path):
    model = _cuda_model(tmp_path)
    eager, graphed = _pair()
    y = torch.arange(32, device="cuda") % 10
    for labels in (None, y, None, y, None, y):  # eager, eager, capture + replay, ..., replay
        torch.manual_seed(5)
        expected = eager.sample(model, 32, labels)
        torch.manual_seed(5)
        got = graphed.sample(model, 32, labels)
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
        assert graphed.last_diagnostics == pytest.approx(eager.last_diagnostics, rel=1e-4, abs=1e-5)
    assert graphed.graph_cache.captures == 2  # one graph for p(x), one for p(x|y)
    assert eager.last_diagnostics["energy_end"] < eager.last_diagnostics["energy_start"]


def test_replays_see_in_place_weight_updates(tmp_path):
    model = _cuda_model(tmp_path)
    eager, graphed = _pair()
    graphed.sample(model, 16)
    graphed.sample(model, 16)  # captured here
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.energy(torch.rand(16, 1, 8, 8, device="cuda")).sum().backward()
    optimizer.step()  # in place, as every training step
    torch.manual_seed(9)
    expected = eager.sample(model, 16)
    torch.manual_seed(9)
    got = graphed.sample(model, 16)
    assert graphed.graph_cache.captures == 1
    assert torch.allclose(got, expected, atol=1e-4)


def test_graphed_noise_is_fresh_and_of_the_right_scale(tmp_path):
    model = _cuda_model(tmp_path)
    noise, steps = 0.1, 8
    sampler = Sampler(UniformNoise((1, 8, 8)), SGLD(0.0, noise), steps=steps, cuda_graphs=True)
    torch.manual_seed(1)
    sampler.sample(model, 512)  # eager
    sampler.sample(model, 512)  # capture and first replay
    first = sampler.sample(model, 512)
    second = sampler.sample(model, 512)
    # step_size 0: x_K = x_0 + noise * (sum of K normals), x_0 ~ U(-1, 1); two independent calls differ
    # by var 2 * (1/3 + K * noise^2). The same noise in both replays would leave only the starts.
    assert sampler.graph_cache.captures == 1
    std = (first - second).std().item()
    expected = (2 * (1 / 3 + steps * noise**2)) ** 0.5
    assert abs(std - expected) / expected < 0.03, (std, expected)


def test_graphed_loop_under_bf16_autocast_stays_close_to_eager_fp32(tmp_path):
    model = _cuda_model(tmp_path)
    eager, graphed = _pair()
    torch.manual_seed(3)
    expected = eager.sample(model, 64)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        graphed.sample(model, 64)  # eager, under autocast
        torch.manual_seed(3)
        got = graphed.sample(model, 64)  # captured under autocast (its cache off), replayed
    assert graphed.graph_cache.captures == 1
    assert got.dtype == torch.float32
    assert (got - expected).abs().mean() < 0.02 * expected.abs().mean()


def test_train_mode_batch_norm_statistics_update_in_replays(tmp_path):
    root = tmp_path / "data"
    write_fake_cifar10(root, n_per_batch=16)
    overrides = [*CIFAR_TINY, f"data.root={root}", "model.backbone.norm=batch"]
    model = Trainer(PLUGINS, load_recipe(RECIPES / "jem_cifar10.yaml", overrides), tmp_path / "r").model
    eager = Sampler(UniformNoise((3, 32, 32)), SGLD(1.0, 0.0), steps=3, model_mode="train")
    graphed = Sampler(UniformNoise((3, 32, 32)), SGLD(1.0, 0.0), steps=3, model_mode="train", cuda_graphs=True)
    stats = [b for name, b in model.named_buffers() if name.endswith("running_mean")]
    assert stats
    graphed.sample(model, 8)  # eager
    graphed.sample(model, 8)  # capture and first replay
    assert graphed.graph_cache.captures == 1
    before = [s.clone() for s in stats]
    torch.manual_seed(4)
    got = graphed.sample(model, 8)
    after_graph = [s.clone() for s in stats]
    assert any(not torch.equal(a, b) for a, b in zip(before, after_graph)), "replay updated no running stats"
    for s, b in zip(stats, before):
        s.copy_(b)
    torch.manual_seed(4)
    expected = eager.sample(model, 8)
    assert torch.allclose(got, expected, atol=1e-3)
    for a, s in zip(after_graph, stats):
        assert torch.allclose(a, s, atol=1e-5)


def _jemkit(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "jemkit", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cifar_run_on_cuda_with_every_fast_option(tmp_path):
    root = tmp_path / "data"
    write_fake_cifar10(root, n_per_batch=32)
    out = tmp_path / "run"
    fast = [
        "performance.channels_last=true", "performance.autocast=bf16", "performance.cuda_graphs=true",
        "sampler.init.on_device=true",
    ]
    result = _jemkit("run", str(RECIPES / "jem_cifar10.yaml"), "--out", str(out), f"data.root={root}",
                     *CIFAR_TINY, *fast)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["status"] == "completed"
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).state
    assert state["sampler"]["buffer"].shape == (256, 3, 32, 32)
    assert torch.isfinite(state["sampler"]["buffer"]).all()


def test_torchrun_launch_on_cuda_finishes_and_resumes(tmp_path):
    # One GPU admits one rank: NCCL refuses two ranks on the same device, and with one rank jemkit
    # skips the process group. NCCL itself therefore needs a machine with at least two GPUs.
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "jemkit"]
    args = ["run", str(RECIPES / "jem_digits.yaml"), "--out", str(out), *TINY_DIGITS, "device=cuda"]
    result = subprocess.run([*launch, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list_checkpoints(out / "checkpoints")
    resumed = _jemkit("run", "--resume", str(out), "train.max_steps=5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 5


def test_compiled_backbone_with_cuda_graphs_of_its_own_trains(tmp_path):
    trainer = Trainer(
        PLUGINS,
        load_recipe(RECIPES / "jem_digits.yaml", [
            *TINY_DIGITS, "device=cuda", "performance.compile=true", "performance.compile_mode=reduce-overhead",
        ]),
        tmp_path,
    )
    eager = _cuda_model(tmp_path / "eager", "model.backbone.channels=[8,16]", "model.backbone.feature_dim=16")
    eager.load_state_dict(trainer.model.state_dict())
    x = torch.rand(16, 1, 8, 8, device="cuda") * 2 - 1
    assert torch.allclose(trainer.model.energy(x), eager.energy(x), atol=1e-3)
    summary = trainer.fit()
    assert summary["steps"] == 3 and summary["status"] == "completed"
