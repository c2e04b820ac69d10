"""Evaluation settings: profile defaults per data set, command-line overrides, clear errors."""

from __future__ import annotations

import pytest

from jemkit.cli.eval import _number
from jemkit.errors import EvalError
from jemkit.evaluation.settings import SECTIONS, resolve_settings


def test_profiles_follow_the_data_set():
    digits = resolve_settings("digits", {})
    assert digits.profile == "digits" and digits.feature_extractor == "digits_classifier"
    assert digits.ood_sets == ["uniform_noise", "interpolations", "inverted", "sklearn_patches"]
    assert digits.bins == 15 and digits.sections == list(SECTIONS)
    cifar = resolve_settings("cifar10", {})
    assert cifar.profile == "image" and cifar.feature_extractor == "inception"
    assert cifar.ood_sets == ["svhn", "cifar100", "celeba_folder", "interpolations", "uniform_noise", "constant"]
    assert cifar.eps_linf[2] == pytest.approx(8 / 255)


def test_overrides_win_and_none_means_default():
    s = resolve_settings("digits", {"bins": 10, "ood_sets": ["inverted"], "n_samples": None})
    assert s.bins == 10 and s.ood_sets == ["inverted"] and s.n_samples == 1000
    with pytest.raises(ValueError, match="unknown evaluation setting"):
        resolve_settings("digits", {"colour": "blue"})


@pytest.mark.parametrize(
    "overrides,flag",
    [
        ({"sections": ["acc", "speed"]}, "--only"),
        ({"norms": []}, "--norms"),
        ({"ood_sets": [], "sections": ["ood"]}, "--ood-sets"),
        ({"eps_l2": [0.5, float("nan")]}, "--eps-l2"),
        ({"refine_noise": 0.01}, "--refine-step-size"),
        ({"n_samples": 5, "is_splits": 10}, "--is-splits"),
        ({"max_test": 1}, "--max-test"),
    ],
)
def test_bad_settings_name_their_flag(overrides, flag):
    with pytest.raises(EvalError, match=flag):
        resolve_settings("digits", overrides)


def test_epsilons_may_be_fractions():
    assert _number("8/255") == pytest.approx(8 / 255) and _number("0.5") == 0.5


def test_typos_in_only_get_a_did_you_mean():
    with pytest.raises(EvalError, match=r"'robustnes'.*did you mean 'robustness'\?"):
        resolve_settings("digits", {"sections": ["acc", "robustnes"]})
    with pytest.raises(EvalError) as caught:
        resolve_settings("digits", {"sections": ["zzz"]})
    assert "did you mean" not in str(caught.value) and "choose from acc,calibration" in str(caught.value)


def test_statistics_settings_are_checked():
    s = resolve_settings("cifar10", {})
    assert (s.n_boot, s.kid_subsets, s.kid_subset_size, s.pr_k) == (1000, 100, 1000, 3)
    assert resolve_settings("digits", {"n_boot": 0}).n_boot == 0, "0 turns intervals off"
    for overrides, flag in (
        ({"n_boot": -5}, "--bootstrap"),
        ({"kid_subsets": 0}, "--kid-subsets"),
        ({"kid_subset_size": 1}, "--kid-subset-size"),
        ({"pr_k": 0}, "--pr-k"),
        ({"sgld_steps": -1}, "--steps"),
    ):
        with pytest.raises(EvalError, match=flag):
            resolve_settings("digits", overrides)


def test_refinement_defaults_per_profile_and_the_run_transition():
    """Digits runs refine with the gentle SGLD of the profile; other data with the run's own
    transition; a pair of flags replaces the profile's pair; ``run`` picks the run's transition."""
    from jemkit.evaluation.settings import REFINE_NOISE_DIGITS, REFINE_STEP_DIGITS

    digits = resolve_settings("digits", {})
    assert (digits.refine_step_size, digits.refine_noise) == (REFINE_STEP_DIGITS, REFINE_NOISE_DIGITS)
    assert REFINE_STEP_DIGITS < 1.0, "gentler than the digits recipes' training transition (step 1.0)"
    cifar = resolve_settings("cifar10", {})
    assert (cifar.refine_step_size, cifar.refine_noise) == (None, None)
    own = resolve_settings("digits", {"refine_step_size": "run"})
    assert (own.refine_step_size, own.refine_noise) == (None, None)
    mine = resolve_settings("digits", {"refine_step_size": 0.5, "refine_noise": 0.0})
    assert (mine.refine_step_size, mine.refine_noise) == (0.5, 0.0)
    for overrides, flag in (
        ({"refine_step_size": 0.5}, "--refine-noise"),
        ({"refine_step_size": "run", "refine_noise": 0.01}, "--refine-noise"),
        ({"refine_step_size": "fast", "refine_noise": 0.01}, "--refine-step-size"),
        ({"refine_step_size": -0.1, "refine_noise": 0.01}, "--refine-step-size"),
    ):
        with pytest.raises(EvalError, match=flag):
            resolve_settings("digits", overrides)
