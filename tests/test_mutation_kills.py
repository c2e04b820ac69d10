"""Tests written for mutants that survived `scripts/mutation.sh` (issue 13): each pins a behaviour
the module's own tests left open. Grouped by the module the mutant lived in."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch

from jemkit.contracts import Batch
from jemkit.testing import tiny_model
from jemkit_plugins.training.losses import JEMLoss, JEMLossParams


# --- plugins/training/losses.py -------------------------------------------------------------------


class _FixedSampler:
    """Returns preset negatives."""

    def __init__(self, x_neg: torch.Tensor) -> None:
        self.x_neg = x_neg
        self.last_diagnostics: dict = {}

    def sample(self, model, n, y=None, **kwargs):
        return self.x_neg[:n]


class _CountingModel(torch.nn.Module):
    """Wraps a JointEnergyModel and counts its forward passes."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)

    def energy_from_logits(self, logits, y=None):
        return self.model.energy_from_logits(logits, y)


def _batch(n: int = 6, with_px: bool = False) -> tuple[torch.nn.Module, Batch, _FixedSampler]:
    torch.manual_seed(0)
    model = tiny_model()
    x = torch.randn(n, 1, 8, 8)
    x_px = torch.randn(n, 1, 8, 8) * 3 if with_px else None
    return model, Batch(x=x, y=torch.arange(n) % 10, x_px=x_px), _FixedSampler(torch.randn(n, 1, 8, 8) * 2)


def test_jem_loss_defaults_are_the_jem_objective_ce_plus_px():
    p = JEMLossParams()
    assert (p.pyx, p.px, p.pxy, p.energy_l2, p.fuse_forward) == (1.0, 1.0, 0.0, 0.0, False)


@pytest.mark.parametrize("weights", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0.0, 0, 2.0)])
def test_any_single_positive_weight_is_a_valid_jem_loss(weights):
    pyx, px, pxy = weights
    JEMLossParams(pyx=pyx, px=px, pxy=pxy)


@pytest.mark.parametrize("zeros", [(0, 0, 0), (0.0, 0, 0.0), (0, 0.0, 0)])
def test_all_three_weights_zero_is_rejected_whatever_the_number_type(zeros):
    pyx, px, pxy = zeros  # YAML gives ints or floats
    with pytest.raises(ValueError, match="at least one of pyx, px, pxy"):
        JEMLossParams(pyx=pyx, px=px, pxy=pxy)


@pytest.mark.parametrize(
    "px, pxy, needs", [(1.0, 0.0, True), (0.0, 1.0, True), (0.0, 0.5, True), (0.0, 0.0, False)]
)
def test_jem_loss_needs_a_sampler_exactly_when_a_likelihood_term_is_on(px, pxy, needs):
    assert JEMLoss(JEMLossParams(pyx=1.0, px=px, pxy=pxy)).needs_sampler is needs


def test_accuracy_metric_is_the_fraction_of_argmax_hits():
    model, batch, sampler = _batch()
    with torch.no_grad():
        pred = model(batch.x).argmax(dim=1)
    # Labels chosen so that hits, predictions above and below the label all occur.
    y = pred.clone()
    y[0], y[1] = (pred[0] + 1) % 10, (pred[1] + 9) % 10
    out = JEMLoss(JEMLossParams(pyx=1.0, px=0.0, pxy=0.0))(model, Batch(x=batch.x, y=y), sampler)
    assert out.metrics["acc"].item() == pytest.approx(4 / 6)


def test_unaugmented_px_inputs_feed_the_energy_only_when_a_likelihood_term_is_on():
    model, batch, sampler = _batch(with_px=True)
    with torch.no_grad():
        e_x = model.energy_from_logits(model(batch.x)).mean().item()
        e_px = model.energy_from_logits(model(batch.x_px)).mean().item()
    assert abs(e_x - e_px) > 1e-3
    ce_only = JEMLoss(JEMLossParams(pyx=1.0, px=0.0, pxy=0.0))(model, batch, sampler)
    assert ce_only.metrics["energy_data"].item() == pytest.approx(e_x, rel=1e-5)
    for px, pxy in [(1.0, 0.0), (0.0, 1.0)]:
        out = JEMLoss(JEMLossParams(pyx=1.0, px=px, pxy=pxy))(model, batch, sampler)
        assert out.metrics["energy_data"].item() == pytest.approx(e_px, rel=1e-5)


def test_energy_l2_metric_only_when_its_term_is_in_the_loss():
    model, batch, sampler = _batch()
    assert "energy_l2" not in JEMLoss(JEMLossParams(energy_l2=0.0))(model, batch, sampler).metrics
    assert "energy_l2" in JEMLoss(JEMLossParams(energy_l2=0.1))(model, batch, sampler).metrics


@pytest.mark.parametrize("fused, calls", [(True, 1), (False, 2)])
def test_fuse_forward_is_one_forward_pass_over_data_and_negatives(fused, calls):
    model, batch, sampler = _batch()
    counting = _CountingModel(model)
    out = JEMLoss(JEMLossParams(fuse_forward=fused))(counting, batch, sampler)
    assert counting.calls == calls
    plain = JEMLoss(JEMLossParams(fuse_forward=not fused))(model, batch, sampler)
    assert out.loss.item() == pytest.approx(plain.loss.item(), rel=1e-5)


def test_the_losses_plugin_registers_jem_and_cross_entropy(plugins):
    registry = plugins.registries["loss"]
    assert {"jem", "cross_entropy"} <= set(registry.names())
    assert registry.get("jem").plugin == registry.get("cross_entropy").plugin


# --- jemkit/distributed.py ------------------------------------------------------------------------
# The collectives run for real in two gloo processes (forked, a few seconds); the multi-process
# training tests of test_distributed.py take minutes, too slow to run once per mutant.


def _collectives_on_rank(rank: int, port: str, results) -> None:
    import torch.distributed as dist

    from jemkit import distributed as d

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    cpu = torch.device("cpu")
    info = d.join(cpu)  # reads torchrun's variables and joins a gloo group (CPU)
    try:
        assert d.join(cpu) == info  # a second join is harmless
        assert info == d.DistInfo(rank=rank, world_size=2, local_rank=rank)
        assert dist.get_backend() == "gloo"
        means = d.mean_over_ranks({"a": torch.tensor(rank + 1.0), "b": torch.tensor([10.0 * rank])}, info, cpu)
        gathered = d.gather_states({"w": torch.tensor([rank, 2 * rank]), "v": torch.tensor([7.0 + rank])}, info, cpu)
        d.barrier(info)
        results.put(
            {
                "rank": rank,
                "means": {k: v.item() for k, v in means.items()},
                "any_one": d.any_rank(rank == 1, info, cpu),
                "any_none": d.any_rank(False, info, cpu),
                "gathered": [{k: v.tolist() for k, v in g.items()} for g in gathered],
                "broadcast": d.broadcast_object(f"run-{rank}", info),
                "objects": d.gather_objects(3 * rank, info),
                "empty": d.mean_over_ranks({}, info, cpu),
            }
        )
    finally:
        d.shutdown()


def test_collectives_over_two_gloo_processes():
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    procs = [ctx.Process(target=_collectives_on_rank, args=(r, port, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    out = sorted((results.get(timeout=120) for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in out:
        assert r["means"] == {"a": 1.5, "b": 5.0}
        assert r["any_one"] is True and r["any_none"] is False
        assert r["gathered"] == [{"w": [0, 0], "v": [7.0]}, {"w": [1, 2], "v": [8.0]}]
        assert r["broadcast"] == "run-0"
        assert r["objects"] == [0, 3]
        assert r["empty"] == {}


def test_a_single_process_is_rank_0_of_1_and_collectives_are_identities(monkeypatch):
    from jemkit import distributed as d

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = d.from_environment()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (0, 1, 0, False, True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = d.from_environment()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (2, 4, 1, True, False)
    single, cpu = d.DistInfo(), torch.device("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        single.rank = 1  # type: ignore[misc]
    assert len({d.DistInfo(), d.DistInfo(rank=0)}) == 1  # hashable, compared by value
    assert single == d.DistInfo(rank=0, world_size=1, local_rank=0)
    d.shutdown()  # no process group: leaving is a no-op
    values = {"a": torch.tensor(3.0)}
    assert d.mean_over_ranks(values, single, cpu) is values
    assert d.any_rank(True, single, cpu) is True and d.any_rank(False, single, cpu) is False
    assert d.gather_states(values, single, cpu) == [values]
    assert d.broadcast_object("x", single) == "x" and d.gather_objects(5, single) == [5]


# --- jemkit/evaluation/calibration.py -------------------------------------------------------------


def _hand_ece(confidence: list[float], correct: list[bool], bins: int) -> float:
    """``sum_b |acc_b - conf_b| n_b / n`` with bins ``[b/bins, (b+1)/bins)``, 1.0 in the last bin."""
    total, n = 0.0, len(confidence)
    for b in range(bins):
        members = [i for i, c in enumerate(confidence) if min(int(c * bins), bins - 1) == b]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidence[i] for i in members) / len(members)
            total += abs(acc - conf) * len(members) / n
    return total


def test_reliability_bins_match_a_hand_count_with_edges_and_a_confidence_of_one():
    from jemkit.evaluation.calibration import reliability_bins

    probs = torch.tensor(
        [
            [0.30, 0.25, 0.25, 0.20],  # confidence 0.3 -> bin 1, correct
            [0.20, 0.50, 0.20, 0.10],  # 0.5 exactly -> bin 2 (left-closed), wrong
            [0.10, 0.10, 0.60, 0.20],  # 0.6 -> bin 2, correct
            [0.95, 0.05, 0.00, 0.00],  # 0.95 -> bin 3, correct
            [0.00, 0.00, 0.00, 1.00],  # 1.0 -> last bin, wrong
        ],
        dtype=torch.float64,
    )
    targets = torch.tensor([0, 0, 2, 0, 1])
    got = reliability_bins(probs, targets, bins=4)
    assert got["lower"] == [0.0, 0.25, 0.5, 0.75]
    assert got["upper"] == [0.25, 0.5, 0.75, 1.0]
    assert got["count"] == [0.0, 1.0, 2.0, 2.0]
    assert got["confidence"] == pytest.approx([0.0, 0.3, 0.55, 0.975])
    assert got["accuracy"] == pytest.approx([0.0, 1.0, 0.5, 0.5])


def test_calibration_defaults_are_15_bins_and_bins_below_one_are_refused():
    from jemkit.evaluation.calibration import expected_calibration_error, reliability_bins

    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(400, 5, generator=g, dtype=torch.float64) * 2, dim=1)
    targets = torch.randint(0, 5, (400,), generator=g)
    conf, pred = probs.max(dim=1)
    correct = (pred == targets).tolist()
    hand15, hand14 = _hand_ece(conf.tolist(), correct, 15), _hand_ece(conf.tolist(), correct, 14)
    assert abs(hand15 - hand14) > 1e-4  # the data tell 15 bins from 14
    assert expected_calibration_error(probs, targets) == pytest.approx(hand15, abs=1e-6)
    assert len(reliability_bins(probs, targets)["count"]) == 15
    assert expected_calibration_error(probs, targets, bins=1) == pytest.approx(
        abs(sum(correct) / 400 - conf.mean().item()), abs=1e-6
    )
    with pytest.raises(ValueError, match="bins must be at least 1"):
        expected_calibration_error(probs, targets, bins=0)


# --- jemkit/evaluation/detection.py ---------------------------------------------------------------


@pytest.mark.parametrize("tpr", [-0.5, 0.0, 1.5])
def test_fpr_at_tpr_refuses_a_rate_outside_0_1(tpr):
    from jemkit.evaluation.detection import fpr_at_tpr

    with pytest.raises(ValueError, match="tpr must lie in"):
        fpr_at_tpr(torch.tensor([1.0, 2.0]), torch.tensor([0.5]), tpr=tpr)


def test_fpr_at_tpr_one_accepts_every_in_distribution_input():
    from jemkit.evaluation.detection import fpr_at_tpr

    # threshold = the lowest in-distribution score 1.0: OOD 0.5 rejected, 1.0 and 3.0 accepted.
    assert fpr_at_tpr(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 1.0, 3.0]), tpr=1.0) == pytest.approx(2 / 3)


def test_one_score_per_side_is_enough_and_an_empty_side_is_refused():
    from jemkit.evaluation.detection import auroc, fpr_at_tpr

    assert auroc(torch.tensor([2.0]), torch.tensor([1.0])) == pytest.approx(1.0)
    assert fpr_at_tpr(torch.tensor([2.0]), torch.tensor([3.0])) == pytest.approx(1.0)
    for s_in, s_out in [(torch.tensor([]), torch.tensor([1.0])), (torch.tensor([1.0]), torch.tensor([]))]:
        with pytest.raises(ValueError, match="at least one in-distribution and one OOD score"):
            auroc(s_in, s_out)


def test_auroc_ranks_large_negative_log_px_scores_without_ties_or_flips():
    from jemkit.evaluation.detection import auroc

    # log p(x) of images is often in the thousands below zero: the affine rescale must keep the
    # order (no sigmoid saturation into ties, no sign flip).
    assert auroc(torch.tensor([-1000.0]), torch.tensor([-3000.0])) == pytest.approx(1.0)
    assert auroc(torch.tensor([-3000.0]), torch.tensor([-1000.0])) == pytest.approx(0.0)
    assert auroc(torch.tensor([-3000.0, -1000.0]), torch.tensor([-2000.0])) == pytest.approx(0.5)


# --- jemkit/evaluation/inception_score.py ---------------------------------------------------------


def test_inception_score_std_over_splits_and_shape_checks():
    from jemkit.evaluation.inception_score import inception_score, inception_score_from_logits

    # Split 1: one-hot over two classes (IS 2); split 2: identical rows (IS 1).
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    assert inception_score(probs, splits=2) == pytest.approx((1.5, 0.5))
    assert inception_score(probs, splits=1)[1] == 0.0
    assert inception_score(torch.full((4, 2), 0.5), splits=3) == pytest.approx((1.0, 0.0))  # N >= splits > K
    assert inception_score(probs, splits=4) == pytest.approx((1.0, 0.0))  # N == splits: one row each
    # Identical rows: p(y) is their common (non-uniform) row, so IS is exactly 1.
    assert inception_score(torch.tensor([[0.9, 0.1]] * 3)) == pytest.approx((1.0, 0.0))
    logits = torch.tensor([[9.0, -9.0], [-9.0, 9.0]])
    assert inception_score_from_logits(logits) == pytest.approx((2.0, 0.0), abs=1e-6)  # default: one split
    bad_inputs = [(torch.full((2, 2), 0.5), 3), (torch.full((4,), 0.25), 1), (torch.full((2, 2, 2), 0.5), 1)]
    for bad, splits in bad_inputs + [(torch.full((4, 2), 0.5), 0)]:
        with pytest.raises(ValueError, match="need probabilities"):
            inception_score(bad, splits=splits)


# --- jemkit/evaluation/frechet.py -----------------------------------------------------------------


def test_sqrtm_psd_refuses_a_vector_and_a_non_square_matrix():
    from jemkit.evaluation.frechet import sqrtm_psd

    for bad in (torch.ones(3), torch.ones(2, 3)):
        with pytest.raises(ValueError, match="square matrix"):
            sqrtm_psd(bad)


def test_sqrtm_psd_clips_tiny_negative_eigenvalues_from_rounding_to_zero():
    from jemkit.evaluation.frechet import sqrtm_psd

    root = sqrtm_psd(torch.diag(torch.tensor([4.0, -1e-12, 9.0], dtype=torch.float64)))
    assert torch.equal(root, torch.diag(torch.tensor([2.0, 0.0, 3.0], dtype=torch.float64)))


def test_fid_of_a_set_with_itself_is_zero_never_negative():
    from jemkit.evaluation.frechet import feature_fid

    # The raw expression rounds to about -1e-14 for some of these sets on x86 (seeds 1, 4, 6).
    for seed in range(10):
        f = torch.randn(50, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert 0.0 <= feature_fid(f, f) < 1e-10


# --- jemkit/evaluation/kid.py ---------------------------------------------------------------------


def test_kid_refuses_different_widths_both_ways_and_uses_100_subsets_by_default():
    from jemkit.evaluation.kid import kernel_inception_distance

    g = torch.Generator().manual_seed(0)
    f, r = torch.randn(12, 3, generator=g), torch.randn(10, 3, generator=g) + 0.5
    for a, b in [(f, torch.randn(10, 4)), (torch.randn(12, 4), r)]:
        with pytest.raises(ValueError, match="need the same width, got 3 and 4|need the same width, got 4 and 3"):
            kernel_inception_distance(a, b)
    default = kernel_inception_distance(f, r, subset_size=5)
    assert default == kernel_inception_distance(f, r, subsets=100, subset_size=5)
    assert default != kernel_inception_distance(f, r, subsets=99, subset_size=5)


# --- jemkit/evaluation/diversity.py ---------------------------------------------------------------


def test_mean_pairwise_distance_needs_two_rows_and_two_are_enough():
    from jemkit.evaluation.diversity import mean_pairwise_distance

    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="N >= 2"):
        mean_pairwise_distance(torch.tensor([[1.0, 2.0]]))


def test_class_diversity_by_hand_with_undefined_classes():
    from jemkit.evaluation.diversity import class_diversity

    samples = torch.tensor([[0.0, 0.0], [0.0, 2.0], [7.0, 7.0], [1.0, 1.0], [2.0, 2.0]])
    sample_labels = torch.tensor([0, 0, 1, 2, 2])  # class 1: a single sample
    real = torch.tensor([[0.0, 0.0], [0.0, 4.0], [1.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 5.0]])
    real_labels = torch.tensor([0, 0, 1, 1, 2, 2])  # class 2: identical real images
    got = class_diversity(samples, sample_labels, real, real_labels, num_classes=3)
    assert got["per_class"] == [pytest.approx(0.5), None, None]
    assert got["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one label"):
        class_diversity(samples, sample_labels, real, real_labels[:-1], num_classes=3)


def test_knn_radii_by_hand_with_the_papers_k_3_by_default():
    from jemkit.evaluation.diversity import knn_radii

    points = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    assert knn_radii(points).tolist() == [6.0, 5.0, 3.0, 5.0, 9.0]  # 3rd nearest other point
    assert knn_radii(points[:4], k=3).tolist() == [6.0, 5.0, 3.0, 6.0]  # k + 1 rows are enough
    with pytest.raises(ValueError, match="N >= 4"):
        knn_radii(points[:3], k=3)


def test_precision_recall_defaults_to_k_3_and_names_the_short_set():
    from jemkit.evaluation.diversity import precision_recall

    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g) * 1.5 + 0.7
    assert precision_recall(real, fake, k=3) != precision_recall(real, fake, k=4)  # the data tell k apart
    assert precision_recall(real, fake) == precision_recall(real, fake, k=3)
    with pytest.raises(ValueError, match="real_features must be"):
        precision_recall(real[:3], fake, k=3)


# --- jemkit/evaluation/bootstrap.py ---------------------------------------------------------------


def test_bootstrap_ece_statistic_matches_a_hand_ece_for_1_4_and_15_bins():
    from jemkit.evaluation import bootstrap

    g = torch.Generator().manual_seed(5)
    conf = torch.rand(200, generator=g, dtype=torch.float64) * 0.6 + 0.4
    conf[:3] = torch.tensor([1.0, 0.5, 0.75], dtype=torch.float64)  # edges and a confidence of 1
    correct = torch.rand(200, generator=g) < conf
    for bins in (1, 4, 15):
        got = bootstrap.ece(bins)(conf[None], correct[None])
        assert got.item() == pytest.approx(_hand_ece(conf.tolist(), correct.tolist(), bins), abs=1e-12)
    assert bootstrap.ece()(conf[None], correct[None]).item() == pytest.approx(_hand_ece(conf.tolist(), correct.tolist(), 15))
    with pytest.raises(ValueError, match="bins must be at least 1"):
        bootstrap.ece(0)


def test_bootstrap_levels_and_rates_outside_their_ranges_are_refused():
    from jemkit.evaluation import bootstrap
    from jemkit.evaluation.detection import fpr_at_tpr

    x = torch.arange(10, dtype=torch.float64)
    for level in (-0.5, 0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="level must lie strictly between 0 and 1"):
            bootstrap.bootstrap_ci(lambda a: a.mean(dim=1), x, n_boot=20, level=level)
    with pytest.raises(ValueError, match="undefined"):
        bootstrap.bootstrap_ci(lambda a: a.mean(dim=1) * float("nan"), x, n_boot=20)
    for tpr in (-0.5, 0.0, 1.5):
        with pytest.raises(ValueError, match="tpr must lie in"):
            bootstrap.fpr_at_tpr(tpr)
    s_in, s_out = torch.arange(40.0), torch.arange(40.0) - 15.5  # default 0.95, as in detection
    assert bootstrap.fpr_at_tpr()(s_in[None], s_out[None]).item() == pytest.approx(fpr_at_tpr(s_in, s_out))
    assert fpr_at_tpr(s_in, s_out) != fpr_at_tpr(s_in, s_out, tpr=0.5)


# --- jemkit/config.py -----------------------------------------------------------------------------


def test_loggers_given_as_one_string_is_a_recipe_error():
    from omegaconf import OmegaConf

    from jemkit.config import check_loggers
    from jemkit.errors import JemkitError

    check_loggers(OmegaConf.create({"loggers": ["tensorboard"]}), ["tensorboard"])
    with pytest.raises(JemkitError, match="loggers must be a list of logger plugin names"):
        check_loggers(OmegaConf.create({"loggers": "tensorboard"}), ["tensorboard"])


def test_a_damaged_run_config_is_a_recipe_error_not_a_traceback(tmp_path):
    from jemkit.config import read_run_config
    from jemkit.errors import JemkitError

    (tmp_path / "config.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(JemkitError, match="is not a readable recipe"):
        read_run_config(tmp_path)


def test_train_defaults_evaluate_and_checkpoint_every_epoch():
    from jemkit.config import TrainParams

    p = TrainParams()
    assert (p.eval_every_epochs, p.checkpoint_every_epochs) == (1, 1)


# --- jemkit/sampler.py ----------------------------------------------------------------------------


def test_first_nonfinite_step_by_hand():
    from jemkit.sampler import first_nonfinite_step

    ok, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    final = torch.zeros(2, 3)
    assert first_nonfinite_step([ok, ok], [ok, ok], final).item() == -1  # everything finite
    assert first_nonfinite_step([nan, ok], [ok, ok], final).item() == 0  # the first input
    assert first_nonfinite_step([ok, ok], [ok, nan], final).item() == 1  # step 1's output
    assert first_nonfinite_step([ok, ok], [ok, ok], final / 0).item() == 2  # the last output


def test_replayed_samples_come_back_in_order_once():
    from jemkit.sampler import ReplayedSamples

    a, b = torch.zeros(2, 1), torch.ones(2, 1)
    replay = ReplayedSamples([a, b])
    assert replay.sample(None, 2) is a and replay.sample(None, 2) is b
    with pytest.raises(RuntimeError, match="drew more samples"):
        replay.sample(None, 2)


class _ShiftByOne:
    """A transition that moves every chain by +1 (energies at the step's input)."""

    def step(self, x, energy_fn):
        from jemkit.contracts import StepResult

        return StepResult(x=x + 1.0, energy=energy_fn(x), grad_norm=torch.tensor(0.0))


class _SquareEnergy(torch.nn.Module):
    def energy(self, x, y=None):
        return x.pow(2).sum(dim=1)


@pytest.mark.parametrize("track", [None, False, True])
def test_last_energy_is_the_last_steps_input_unless_the_final_energy_is_tracked(track):
    from jemkit.sampler import chain_loop, run_chains

    x = torch.zeros(3, 2)  # E = 0, then 2 after one step, then 8 after two
    kwargs = {} if track is None else {"track_final_energy": track}
    for out in (
        chain_loop(_SquareEnergy(), _ShiftByOne(), x, None, 2, **kwargs)(),
        run_chains(_SquareEnergy(), _ShiftByOne(), x, None, 2, **kwargs),
    ):
        assert out.first_energy.item() == 0.0
        assert out.last_energy.item() == (8.0 if track else 2.0)
        assert torch.equal(out.x, torch.full((3, 2), 2.0))
