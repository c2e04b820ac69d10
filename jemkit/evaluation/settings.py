"""Evaluation settings: defaults per data set (a *profile*), overridden by ``jemkit eval`` flags.

Settings live outside the training recipe: a run's ``config.yaml`` needs no ``eval:`` section.
The profile is ``digits`` for runs on the ``digits`` data set and ``image`` (CIFAR-sized,
the JEM paper's protocol) for any other. Every resolved setting is recorded in the report.
Epsilons are in the ``[-1, 1]`` input units of the models.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from jemkit.errors import EvalError

#: Sections ``--only`` accepts, in report order.
SECTIONS: tuple[str, ...] = ("acc", "calibration", "ood", "robustness", "generation")
#: Attack norms.
NORMS: tuple[str, ...] = ("linf", "l2")
#: The registered feature extractor whose ``weights`` parameter ``--inception-weights`` sets.
INCEPTION_EXTRACTOR = "inception"


@dataclass
class EvalSettings:
    """Everything one ``jemkit eval`` invocation uses (see ``jemkit eval --help`` for each flag)."""

    profile: str = "image"
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    #: ``last`` (newest step checkpoint), ``best``, a step number or a checkpoint path.
    checkpoint: str = "last"
    #: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; ``jemkit sample``'s default too.
    device: str = "auto"
    seed: int = 0
    batch_size: int = 256
    #: Evaluate on at most this many test examples (``None``: all).
    max_test: int | None = None
    #: SGLD refinement steps on the inputs before the refined accuracy.
    refine_steps: int = 10
    #: Refinement/defence transition: SGLD with this step size (energy units per [-1, 1] input unit
    #: squared) and noise std ([-1, 1] units); both ``None``: the run's own sampler transition
    #: (``--refine-step-size run``). The ``digits`` profile sets both (see ``PROFILES``).
    refine_step_size: float | None = None
    refine_noise: float | None = None
    bins: int = 15
    ood_sets: list[str] = field(default_factory=list)
    #: Per OOD set, parameters for its factory (``--ood-param set.key=value``).
    ood_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: At most this many inputs per OOD set and of the in-distribution test split.
    ood_n: int = 2000
    norms: list[str] = field(default_factory=lambda: list(NORMS))
    eps_linf: list[float] = field(default_factory=list)
    eps_l2: list[float] = field(default_factory=list)
    pgd_steps: int = 20
    pgd_random_start: bool = False
    #: Attack at most this many test examples.
    robust_n: int = 500
    defence: bool = False
    defence_steps: int = 10
    defence_copies: int = 4
    defence_noise: float = 0.03
    #: How attacks differentiate the defence's refinement: ``end_to_end`` (exact, SGLD only) or ``bpda``.
    defence_attack: str = "end_to_end"
    #: Samples per generated set (unconditional; class-conditional: split evenly over classes).
    n_samples: int = 10000
    #: Transition steps of fresh chains started from U(-1, 1).
    sgld_steps: int = 100
    grid_per_class: int = 10
    feature_extractor: str = INCEPTION_EXTRACTOR
    extractor_params: dict[str, Any] = field(default_factory=dict)
    inception_weights: str | None = None
    is_splits: int = 10
    #: Real images whose features FID compares against: ``test`` or ``train`` split.
    fid_reference: str = "test"
    #: Bootstrap replicates of every 95% confidence interval (resampling the test inputs; 0: no intervals).
    n_boot: int = 1000
    #: KID: random subset pairs, and rows per subset (capped by the smaller set).
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    #: Nearest neighbour ``k`` of the precision/recall manifolds (Kynkäänniemi et al. 2019 use 3).
    pr_k: int = 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: ``--refine-step-size`` value that selects the run's own sampler transition.
RUN_TRANSITION = "run"
#: The digits profile's refinement SGLD (step size, noise std in [-1, 1] units).
REFINE_STEP_DIGITS = 0.03
REFINE_NOISE_DIGITS = 0.01
#: An override that sets a setting to ``None`` (plain ``None`` means "not given").
_UNSET = object()

#: Profile defaults over :class:`EvalSettings`' own.
PROFILES: dict[str, dict[str, Any]] = {
    "digits": {
        "ood_sets": ["uniform_noise", "interpolations", "inverted", "sklearn_patches"],
        "ood_n": 2000,
        "eps_linf": [0.0, 0.1, 0.2, 0.3],
        "eps_l2": [0.0, 0.5, 1.0, 2.0],
        "robust_n": 360,
        "n_samples": 1000,
        "sgld_steps": 100,
        "feature_extractor": "digits_classifier",
        "is_splits": 1,
        # Refinement and the defence: a gentler SGLD than the training transition (step 1.0,
        # noise 0.01), which in 10 steps moves a test digit far enough to cost JEM about 2.5
        # points of accuracy (0.03 costs 0.06); measured over seeds in docs/results_refinement.md
        # (scripts/refine_sweep.py).
        "refine_step_size": REFINE_STEP_DIGITS,
        "refine_noise": REFINE_NOISE_DIGITS,
    },
    "image": {
        "ood_sets": ["svhn", "cifar100", "celeba_folder", "interpolations", "uniform_noise", "constant"],
        "eps_linf": [0.0, 4 / 255, 8 / 255, 16 / 255, 32 / 255],
        "eps_l2": [0.0, 0.25, 0.5, 1.0, 2.0],
        "robust_n": 500,
        "n_samples": 10000,
        "sgld_steps": 100,
        "feature_extractor": INCEPTION_EXTRACTOR,
        "is_splits": 10,
    },
}


def profile_for(data_name: str) -> str:
    """``digits`` for the digits data set, else ``image``."""
    return "digits" if data_name == "digits" else "image"


def resolve_settings(data_name: str, overrides: dict[str, Any]) -> EvalSettings:
    """Settings for a run on ``data_name``: dataclass defaults < profile < ``overrides`` (``None`` = unset)."""
    profile = profile_for(data_name)
    values: dict[str, Any] = {"profile": profile, **PROFILES[profile]}
    overrides = _refine_overrides(overrides)
    known = {f.name for f in dataclasses.fields(EvalSettings)}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"unknown evaluation setting {key!r}")
        if value is _UNSET:
            values[key] = None
        elif value is not None:
            values[key] = value
    settings = EvalSettings(**values)
    check_settings(settings)
    return settings


def _refine_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """``--refine-step-size/--refine-noise`` come as a pair (a profile's pair is replaced whole);
    ``--refine-step-size run`` alone selects the run's own transition (both settings ``None``)."""
    step, noise = overrides.get("refine_step_size"), overrides.get("refine_noise")
    if step == RUN_TRANSITION:
        if noise is not None:
            raise _fail("--refine-noise", "the run's own transition (--refine-step-size run) has its own noise; drop --refine-noise")
        return {**overrides, "refine_step_size": _UNSET, "refine_noise": _UNSET}
    if (step is None) != (noise is None):
        raise _fail(
            "--refine-step-size/--refine-noise",
            "give both (an SGLD of your own) or --refine-step-size run alone (the run's transition)",
        )
    if isinstance(step, str):
        raise _fail("--refine-step-size", f"a non-negative number or 'run', got {step!r}")
    return overrides



def _did_you_mean(unknown: list[str], choices: tuple[str, ...]) -> str:
    """`` (did you mean 'acc'?)`` for the first unknown name close to a choice, else ``""``."""
    for name in unknown:
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
        if close:
            return f" (did you mean {close[0]!r}?)"
    return ""


def _fail(flag: str, problem: str) -> EvalError:
    return EvalError(f"{flag}: {problem}. See `jemkit eval --help`.")


def check_settings(s: EvalSettings) -> None:
    """Raise :class:`EvalError` naming the flag of the first bad setting."""
    unknown = [x for x in s.sections if x not in SECTIONS]
    if unknown or not s.sections:
        raise _fail(
            "--only",
            f"unknown section(s) {', '.join(map(repr, unknown)) or '(none given)'}"
            f"{_did_you_mean(unknown, SECTIONS)}; choose from {','.join(SECTIONS)}",
        )
    bad_norms = [n for n in s.norms if n not in NORMS]
    if bad_norms or not s.norms:
        raise _fail(
            "--norms",
            f"unknown norm(s) {', '.join(map(repr, bad_norms)) or '(none given)'}; choose from {','.join(NORMS)}",
        )
    positive = {
        "--batch-size": s.batch_size,
        "--bins": s.bins,
        "--ood-n": s.ood_n,
        "--robust-n": s.robust_n,
        "--defence-copies": s.defence_copies,
        "--n-samples": s.n_samples,
        "--grid-per-class": s.grid_per_class,
        "--is-splits": s.is_splits,
        "--kid-subsets": s.kid_subsets,
        "--pr-k": s.pr_k,
    }
    for flag, value in positive.items():
        if value < 1:
            raise _fail(flag, f"must be at least 1, got {value}")
    non_negative = {
        "--refine-steps": s.refine_steps,
        "--pgd-steps": s.pgd_steps,
        "--steps": s.sgld_steps,
        "--defence-steps": s.defence_steps,
        "--defence-noise": s.defence_noise,
        "--bootstrap": s.n_boot,
    }
    for flag, value in non_negative.items():
        if value < 0:
            raise _fail(flag, f"must be non-negative, got {value}")
    if s.kid_subset_size < 2:
        raise _fail("--kid-subset-size", f"must be at least 2, got {s.kid_subset_size}")
    if s.max_test is not None and s.max_test < 2:
        raise _fail("--max-test", f"must be at least 2, got {s.max_test}")
    for flag, values in (("--eps", s.eps_linf), ("--eps-l2", s.eps_l2)):
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise _fail(flag, f"epsilons must be finite and non-negative, got {values}")
    if (s.refine_step_size is None) != (s.refine_noise is None):
        raise _fail(
            "--refine-step-size/--refine-noise", "give both (an SGLD of your own) or --refine-step-size run alone"
        )
    if s.refine_step_size is not None and (s.refine_step_size < 0 or s.refine_noise < 0):  # type: ignore[operator]
        raise _fail("--refine-step-size/--refine-noise", "must be non-negative")
    if s.defence_attack not in ("end_to_end", "bpda"):
        raise _fail("--defence-attack", f"choose end_to_end or bpda, got {s.defence_attack!r}")
    if s.fid_reference not in ("test", "train"):
        raise _fail("--fid-reference", f"choose test or train, got {s.fid_reference!r}")
    if "ood" in s.sections and not s.ood_sets:
        raise _fail("--ood-sets", "name at least one OOD set, or leave ood out of --only")
    if s.n_samples < s.is_splits:
        raise _fail("--is-splits", f"cannot exceed --n-samples ({s.n_samples}), got {s.is_splits}")
