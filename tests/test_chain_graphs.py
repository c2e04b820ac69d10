"""``performance.cuda_graphs``: the static-buffer plumbing around a captured sampler loop.

CUDA graphs need a GPU (tests/test_gpu.py captures real ones). Here the capture is replaced by
an eager stand-in with the same contract (``replay()`` rewrites the static outputs from the
static inputs), which checks everything around the graph on CPU: what is cached under which key,
that inputs are copied in and outputs cloned out, recapture when weights move, and that the
graphed path returns what the eager path returns.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import jemkit.sampler
from jemkit.chain_graphs import ChainGraphCache, ChainLoopOutput, LoopBody, loop_key
from jemkit.config import load_recipe
from jemkit.performance import PerformanceParams
from jemkit.plugin_manager import load_plugins
from jemkit.sampler import Sampler
from jemkit.train import Trainer
from jemkit_plugins.samplers.mcmc import MALA
from jemkit_plugins.samplers.sampling import SGLD, UniformNoise

from conftest import RECIPES

PLUGINS = load_plugins(entry_points=False)


class EagerReplay:
    """Stand-in for ``torch.cuda.CUDAGraph``: ``replay`` reruns the body into the static outputs."""

    def __init__(self, body: LoopBody, outputs: ChainLoopOutput) -> None:
        self.body, self.outputs, self.replays = body, outputs, 0

    def replay(self) -> None:
        self.replays += 1
        for static, fresh in zip(self.outputs.tensors(), self.body().tensors()):
            if static is not None:
                static.copy_(fresh)


def eager_capture(body: LoopBody) -> tuple[EagerReplay, ChainLoopOutput]:
    outputs = body()  # like the warm-up run before a real capture
    return EagerReplay(body, outputs), outputs


def _model(tmp_path):
    overrides = ["model.backbone.channels=[8,16]", "model.backbone.feature_dim=16", "sampler.steps=3"]
    return Trainer(PLUGINS, load_recipe(RECIPES / "jem_digits.yaml", overrides), tmp_path).model


@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """Graph-safe transitions take the graphed path on CPU (the real rule asks for CUDA)."""
    monkeypatch.setattr(jemkit.sampler, "graphs_apply", lambda transition, x, steps: steps > 0 and transition.graph_safe)


def _graphed_sampler(transition=None, steps: int = 4) -> Sampler:
    """A sampler that takes the graphed path on CPU, with the eager stand-in capture."""
    sampler = Sampler(UniformNoise((1, 8, 8)), transition or SGLD(1.0, 0.0), steps=steps, cuda_graphs=True)
    sampler.graph_cache = ChainGraphCache(capture=eager_capture)
    return sampler


def test_graphed_loop_returns_what_the_eager_loop_returns(tmp_path, cpu_as_cuda):
    model = _model(tmp_path)
    eager = Sampler(UniformNoise((1, 8, 8)), SGLD(1.0, 0.0), steps=4)
    graphed = _graphed_sampler()
    y = torch.arange(6) % 10
    for labels in (None, y, None, y):  # the second call of a shape is captured and replayed
        torch.manual_seed(7)
        expected = eager.sample(model, 6, labels)
        torch.manual_seed(7)
        got = graphed.sample(model, 6, labels)
        assert torch.allclose(got, expected, atol=1e-6)
        assert graphed.last_diagnostics == pytest.approx(eager.last_diagnostics, rel=1e-6)
        assert set(graphed.last_diagnostics) == {"reinit_fraction", "energy_start", "energy_end", "grad_norm"}
    assert graphed.graph_cache.captures == 2
    assert all(g.graph.replays == 1 for g in graphed.graph_cache.graphs.values())
    # the chains moved downhill in energy, so the comparison is not between two no-ops
    assert eager.last_diagnostics["energy_end"] < eager.last_diagnostics["energy_start"]


def test_one_capture_per_shape_on_its_second_call_and_results_are_not_overwritten(tmp_path, cpu_as_cuda):
    model = _model(tmp_path)
    sampler = _graphed_sampler()
    sampler.sample(model, 6)
    assert sampler.graph_cache.captures == 0, "a one-off call runs eagerly"
    first = sampler.sample(model, 6)
    kept = first.clone()
    second = sampler.sample(model, 6)
    assert sampler.graph_cache.captures == 1
    assert torch.equal(first, kept), "a later replay overwrote the result of an earlier call"
    assert not torch.equal(first, second)
    for _ in range(2):
        sampler.sample(model, 5)  # another batch size
        sampler.sample(model, 6, torch.zeros(6, dtype=torch.long))  # conditional chains: E(x, y)
        sampler.sample(model, 6, steps=2)  # another K
    assert sampler.graph_cache.captures == 4
    sampler.sample(model, 6, torch.ones(6, dtype=torch.long))  # new labels, same shapes: replay
    assert sampler.graph_cache.captures == 4


def test_labels_are_copied_into_the_static_buffer(tmp_path, cpu_as_cuda):
    model = _model(tmp_path)
    eager = Sampler(UniformNoise((1, 8, 8)), SGLD(1.0, 0.0), steps=3)
    graphed = _graphed_sampler(steps=3)
    for _ in range(2):
        graphed.sample(model, 4, torch.zeros(4, dtype=torch.long))  # captured with labels 0
    y = torch.tensor([3, 1, 4, 1])
    torch.manual_seed(2)
    expected = eager.sample(model, 4, y)
    torch.manual_seed(2)
    assert torch.allclose(graphed.sample(model, 4, y), expected, atol=1e-6)
    assert graphed.graph_cache.captures == 1


def test_moved_weights_trigger_a_fresh_capture(tmp_path, cpu_as_cuda):
    model = _model(tmp_path)
    sampler = _graphed_sampler()
    sampler.sample(model, 4)
    sampler.sample(model, 4)
    with torch.no_grad():  # an optimiser step: in place, the graph sees it without recapture
        for p in model.parameters():
            p.add_(0.01)
    sampler.sample(model, 4)
    assert sampler.graph_cache.captures == 1
    first = next(model.parameters())
    first.data = first.data.clone()  # a new address: the captured graph would read stale memory
    sampler.sample(model, 4)
    assert sampler.graph_cache.captures == 2


def test_key_separates_memory_format_dtype_and_autocast():
    x = torch.zeros(2, 3, 4, 4)
    base = loop_key(x, None, 5)
    assert loop_key(x.clone(), None, 5) == base
    assert loop_key(x.contiguous(memory_format=torch.channels_last), None, 5) != base
    assert loop_key(x.double(), None, 5) != base
    assert loop_key(x, torch.zeros(2, dtype=torch.long), 5) != base
    assert loop_key(x, None, 6) != base
    assert loop_key(x, None, 5, "train") != loop_key(x, None, 5, "eval")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loop_key(x, None, 5) != base


def test_cpu_runs_stay_eager_even_when_enabled(tmp_path):
    model = _model(tmp_path)
    sampler = Sampler(UniformNoise((1, 8, 8)), SGLD(1.0, 0.01), steps=2, cuda_graphs=True)
    sampler.sample(model, 4)
    assert sampler.graph_cache.captures == 0 and not sampler.graph_cache.graphs


def test_transitions_that_are_not_graph_safe_stay_eager(tmp_path, cpu_as_cuda):
    model = _model(tmp_path)
    sampler = Sampler(UniformNoise((1, 8, 8)), MALA(0.01), steps=2, cuda_graphs=True)
    sampler.graph_cache = ChainGraphCache(capture=eager_capture)
    assert not MALA.graph_safe and SGLD.graph_safe
    sampler.sample(model, 3)
    assert sampler.graph_cache.captures == 0


def test_the_device_rule_needs_cuda_k_steps_and_a_graph_safe_transition():
    on_cuda = SimpleNamespace(device=SimpleNamespace(type="cuda"))  # graphs_apply reads x.device.type only
    rule = jemkit.sampler.graphs_apply
    assert rule(SGLD(1.0, 0.0), on_cuda, 3)
    assert not rule(SGLD(1.0, 0.0), torch.zeros(2), 3)  # CPU
    assert not rule(SGLD(1.0, 0.0), on_cuda, 0)  # nothing to capture
    assert not rule(MALA(0.01), on_cuda, 3)  # keeps state between steps
    bound = SGLD(1.0, 0.0)
    bound.bind = lambda model, y: None  # transitions that bind the model per call (PYLD) stay eager
    assert not rule(bound, on_cuda, 3)


def test_recipe_switches_cuda_graphs_on_for_the_training_sampler(tmp_path):
    trainer = Trainer(PLUGINS, load_recipe(RECIPES / "jem_digits.yaml", ["performance.cuda_graphs=true"]), tmp_path)
    assert trainer.experiment.sampler.cuda_graphs
    assert not Trainer(PLUGINS, load_recipe(RECIPES / "jem_digits.yaml"), tmp_path / "b").experiment.sampler.cuda_graphs


def test_cuda_graphs_with_a_transition_that_is_not_graph_safe_is_a_recipe_error(cli):
    result = cli("run", RECIPES / "jem_digits.yaml", "performance.cuda_graphs=true",
                 "sampler.transition.name=mala", "sampler.transition.step_size=0.01", "train.max_steps=1")
    assert result.code == 2
    assert "performance.cuda_graphs" in result.err and "'mala'" in result.err and "graph_safe" in result.err
    assert "Traceback" not in result.err


def test_cuda_graphs_and_reduce_overhead_compile_do_not_nest():
    with pytest.raises(ValueError, match="cannot nest"):
        PerformanceParams(cuda_graphs=True, compile=True, compile_mode="reduce-overhead")
    PerformanceParams(cuda_graphs=True, compile=True)  # default compile mode nests fine


def test_eval_opens_a_run_with_the_cuda_graphs_of_its_recipe(cli, tmp_path, tiny_digits_overrides):
    from jemkit.evaluation.rundir import load_run

    out = tmp_path / "run"
    result = cli("run", RECIPES / "jem_digits.yaml", "--out", out, *tiny_digits_overrides, "performance.cuda_graphs=true")
    assert result.code == 0, result.err
    run, _ = load_run(PLUGINS, out, "jem", "last", torch.device("cpu"))
    assert run.sampler.cuda_graphs  # jemkit eval's generation then replays graphs on CUDA
