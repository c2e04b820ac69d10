"""benchmarks/time_to_quality.py: the exact early stop of the sample-accuracy judge and the scan
for the first checkpoint that reaches quality (the full pipeline runs in test_results_script.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import RECIPES, run_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import time_to_quality as ttq  # noqa: E402

TINY = [
    "model.backbone.channels=[8,16]",
    "model.backbone.feature_dim=16",
    "sampler.steps=2",
    "sampler.init.size=200",
    "train.epochs=3",
    "train.batch_size=256",
    "train.samples_per_class=1",
    "train.sample_extra_steps=0",
    "loggers=[]",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 3-epoch tiny JEM digits run with a test accuracy and a checkpoint after every epoch."""
    out = tmp_path_factory.mktemp("ttq") / "run"
    recipe = RECIPES / "jem_digits.yaml"
    assert run_cli("run", recipe, "--out", out, *ttq.per_epoch(recipe, TINY)).code == 0
    return out


def test_verdict_bound_and_reach_are_exact():
    early = ttq.SampleVerdict(correct=30, drawn=256, total=1000)
    assert early.accuracy == pytest.approx(30 / 256) and not early.complete
    assert early.bound == pytest.approx(774 / 1000)  # the 744 not drawn all counted correct
    assert early.reaches(0.95) is False and early.reaches(0.774) is None and early.reaches(0.5) is None
    assert ttq.SampleVerdict(950, 1000, 1000).reaches(0.95) is True
    assert ttq.SampleVerdict(949, 1000, 1000).reaches(0.95) is False


def test_judge_stops_once_unreachable_and_its_chunks_are_independent(tiny_run):
    from jemkit.checkpoint import checkpoint_dir, list_checkpoints

    last = list_checkpoints(checkpoint_dir(tiny_run))[-1]
    full = ttq.SampleJudge(per_class=30, steps=2, batch_size=100)(tiny_run, last)
    assert (full.drawn, full.total) == (300, 300) and full.complete
    assert full.correct < 300, "a 3-epoch tiny model misses some of its samples"
    stopped = ttq.SampleJudge(per_class=30, steps=2, batch_size=100)(tiny_run, last, threshold=1.0)
    assert (stopped.drawn, stopped.total) == (100, 300) and stopped.reaches(1.0) is False
    # the first chunk alone (10 per class, the same class-cycled labels and seed) gives the same count
    first = ttq.SampleJudge(per_class=10, steps=2, batch_size=100)(tiny_run, last)
    assert first.drawn == 100 and first.correct == stopped.correct
    # a threshold the full draw could still reach after the first chunk draws everything
    assert ttq.SampleJudge(per_class=30, steps=2, batch_size=100)(tiny_run, last, threshold=0.0) == full


class ScriptedJudge:
    """Verdicts in call order, as the real judge's interface returns them."""

    settings = {"scripted": 1}

    def __init__(self, verdicts):
        self.verdicts, self.calls = list(verdicts), []

    def __call__(self, run_dir, checkpoint, threshold=None):
        self.calls.append((checkpoint.name, threshold))
        return self.verdicts.pop(0)


def test_scan_takes_the_first_checkpoint_with_both_and_caches_verdicts(tiny_run):
    from jemkit.checkpoint import checkpoint_dir, checkpoint_step, list_checkpoints

    steps = [checkpoint_step(p) for p in list_checkpoints(checkpoint_dir(tiny_run))]
    evaluated = [s for s in steps if s]  # step 0 has no test accuracy
    assert len(evaluated) == 3
    (tiny_run / ttq.CACHE).unlink(missing_ok=True)
    judge = ScriptedJudge([ttq.SampleVerdict(10, 100, 300), ttq.SampleVerdict(290, 300, 300)])
    result = ttq.measure_run(tiny_run, acc=0.0, sample_acc=0.95, judge=judge)
    assert [c[1] for c in judge.calls] == [0.95, 0.95] and len(judge.calls) == 2
    assert result.step == evaluated[1] and result.epoch == 2
    assert result.sample_acc == pytest.approx(290 / 300)
    ckpt = next(p for p in list_checkpoints(checkpoint_dir(tiny_run)) if checkpoint_step(p) == evaluated[1])
    assert result.wall_seconds == ttq.checkpoint_wall(ckpt) > 0
    cached = json.loads((tiny_run / ttq.CACHE).read_text())["verdicts"]
    assert cached[str(evaluated[0])] == {"correct": 10, "drawn": 100, "total": 300}

    again = ScriptedJudge([])
    assert ttq.measure_run(tiny_run, acc=0.0, sample_acc=0.95, judge=again).step == evaluated[1]
    assert again.calls == [], "both verdicts come from the cache"
    # a lower threshold that the first checkpoint's early stop cannot rule out (bound 0.7): measured again
    lower = ScriptedJudge([ttq.SampleVerdict(240, 300, 300)])
    assert ttq.measure_run(tiny_run, acc=0.0, sample_acc=0.5, judge=lower).step == evaluated[0]
    assert len(lower.calls) == 1
    # a test-accuracy threshold nothing reaches: never judged, "not reached" with the best test accuracy
    never = ttq.measure_run(tiny_run, acc=1.01, sample_acc=0.5, judge=ScriptedJudge([]))
    assert never.wall_seconds is None and never.sample_acc is None and 0 <= never.test_acc <= 1
