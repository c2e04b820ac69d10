"""The protocol text of ``jemkit eval``'s report: one sentence per section saying exactly how its
numbers were measured, so that a report can be read (and reproduced) without the code."""

from __future__ import annotations

from typing import Any

from jemkit.evaluation import intervals
from jemkit.evaluation.inputs import Inputs
from jemkit.evaluation.metric_names import metric_label
from jemkit.evaluation.pgd import STEP_FACTOR
from jemkit.evaluation.settings import EvalSettings
from jemkit.rng import EVAL_SEED_OFFSET

#: How each ``--defence-attack`` passes gradients through the refinement, for the report.
DEFENCE_ATTACKS = {
    "end_to_end": "end to end: exact gradients through every SGLD step (second-order autograd) + EOT "
    "(logits averaged over fresh noisy copies in every forward pass)",
    "bpda": "BPDA (refinement treated as the identity in the backward pass) + EOT (logits averaged over "
    "fresh noisy copies in every forward pass)",
}


def describe_transition(cfg: dict[str, Any]) -> str:
    """``name (key value, ...)`` of a transition section, without the report's bookkeeping keys."""
    name = cfg.get("name", "?")
    rest = ", ".join(f"{k} {v}" for k, v in cfg.items() if k not in ("name", "source", "model_mode"))
    return f"{name} ({rest})" if rest else str(name)


def bootstrap_sentence(settings: EvalSettings, what: str) -> str:
    """How the section's 95% intervals were computed (empty with ``--bootstrap 0``)."""
    if settings.n_boot <= 0:
        return ""
    return (
        f" [low, high]: 95% percentile-bootstrap interval over {what} ({settings.n_boot} replicates drawn with "
        f"replacement, seed {settings.seed}; the same draws for every run, so run and baseline are paired)."
    )


def noise_note(cfg: Any, settings: EvalSettings) -> str:
    """Why summary.json's test/loss and this report's test NLL differ for the same checkpoint."""
    data = (cfg.get("data") if cfg is not None else None) or {}
    noise = data.get("noise_std", data.get("noise"))
    seed = cfg.get("seed", "?") if cfg is not None else "?"
    train_seed = seed + EVAL_SEED_OFFSET if isinstance(seed, int) else f"seed + {EVAL_SEED_OFFSET}"
    noise_text = f"input noise (data.noise_std {noise})" if noise is not None else "input noise, if any"
    return (
        f" The NLL here differs from summary.json's test/loss for the same checkpoint because the data set adds "
        f"fresh {noise_text} on every read: training's evaluation draws it with torch seed {train_seed} (recipe "
        f"seed {seed} + {EVAL_SEED_OFFSET}), this evaluation with seed {settings.seed}, and --max-test may use a "
        "subset; with noise_std 0 and all test inputs both are the same mean cross-entropy."
    )


def protocol(
    settings: EvalSettings, inputs: Inputs, data_name: str, num_classes: int, cfg: Any = None
) -> dict[str, str]:
    """One sentence per section saying exactly how its numbers were measured (``cfg``: the evaluated
    run's recipe, for its input noise and seed)."""
    s = settings
    n_test = len(inputs.x_test)
    refine_how = (
        "each run's own sampler transition"
        if s.refine_step_size is None
        else f"SGLD with step size {s.refine_step_size} and noise {s.refine_noise}"
    )
    text = {
        "accuracy": (
            f"Top-1 accuracy on {n_test} test examples of {data_name!r} (with the data set's own input noise, "
            "drawn once "
            f"with seed {s.seed}; every run sees the same inputs). Refined: after {s.refine_steps} transitions of "
            f"{refine_how} on E(x), model in its sampler mode. NLL in nats (mean cross-entropy)."
            + noise_note(cfg, s)
            + bootstrap_sentence(s, "the test inputs")
        ),
        "calibration": (
            f"Expected calibration error: L1 gap between accuracy and mean confidence over {s.bins} equal-width "
            "confidence bins, weighted by bin size (torchmetrics MulticlassCalibrationError), on the same test "
            "inputs. The reliability diagram shows each bin's accuracy and mean confidence side by side, with the "
            "number of inputs in the bin above (a bin of a few inputs is noise). Temperature-scaled ECE (Guo et "
            "al. 2017): the logits divided by one T > 0 fitted by NLL, cross-fitted on two seeded halves of the "
            "test inputs (each half scaled with the T fitted on the other half); T > 1 means the model was "
            "over-confident, T < 1 under-confident."
            + bootstrap_sentence(s, "the test inputs")
            + (" ECE is biased upward on small samples, so its interval can lie above the value." if s.n_boot else "")
        ),
        "ood": (
            f"In-distribution = positive class: the first {min(s.ood_n, n_test)} test inputs; OOD inputs: "
            + ", ".join(f"{name} {len(x)}" for name, x in inputs.ood.items())
            + f" (at most {s.ood_n} per set, a seeded subset). AUROC by torchmetrics BinaryAUROC; FPR95 = "
            "fraction of OOD inputs scoring at least the threshold that keeps 95% of the in-distribution inputs. "
            "Scores (higher = more in-distribution): log_px = -E(x) = logsumexp f(x); "
            "max_pyx = max_y p(y|x); grad_norm = "
            "-||d log p(x)/dx||_2."
            + bootstrap_sentence(s, "the in-distribution and the OOD inputs, each resampled on its own")
        ),
        "robustness": (
            f"PGD with {s.pgd_steps} steps maximising cross-entropy, step size {STEP_FACTOR} * eps / steps, "
            f"{'uniform random start' if s.pgd_random_start else 'no random start'}, last iterate, on the first "
            f"{min(s.robust_n, n_test)} test inputs. Epsilons are in the models' input units [-1, 1] (twice the "
            "value in [0, 1] units); perturbed inputs stay in [-1, 1]."
            + (
                f" Defence: logits averaged over {s.defence_copies} copies x + N(0, {s.defence_noise}^2), "
                f"each refined by {s.defence_steps} transitions of {refine_how}; attacked "
                f"{DEFENCE_ATTACKS[s.defence_attack]} (adaptive), "
                "and judged on the inputs crafted against the undefended model (transfer); worst case: an input "
                "counts only if both attacks fail."
                if s.defence
                else ""
            )
            + bootstrap_sentence(s, "the attacked test inputs")
        ),
    }
    if inputs.extractor is not None:
        fid, is_, kid = (metric_label(s.feature_extractor, key) for key in ("fid", "inception_score", "kid"))
        own = (
            f" {s.feature_extractor} features are not Inception's: these numbers compare runs of this data set "
            "with each other, never with published Inception FID/IS/KID."
            if s.feature_extractor != "inception"
            else ""
        )
        text["generation"] = (
            f"{fid}: Fréchet distance between Gaussians fitted to {s.feature_extractor} features "
            f"({inputs.extractor.weights}) "
            f"of the samples and of {inputs.reference_info}. {is_}: exp(E KL(p(y|x) || p(y))) from the extractor's "
            f"logits over {s.is_splits} split(s). {kid}: unbiased MMD^2 with the cubic polynomial kernel "
            f"(a.b/d + 1)^3, mean ± sd over {s.kid_subsets} random subset pairs of min({s.kid_subset_size}, "
            "samples, reference) rows (the sd is the spread between subsets, not an interval); 0 for samples from "
            f"the real distribution, unlike FID not biased by the sample size. Precision / recall (k={s.pr_k} "
            "nearest-neighbour manifolds, Kynkäänniemi et al. 2019): fraction of samples inside the real images' "
            "manifold (they look real) / of real images inside the samples' manifold (the samples cover the real "
            "variety). Diversity: mean pairwise feature distance of the samples over that of the reference images "
            "(class diversity: per class, against the real images of that class, and its mean); 1 is as varied as "
            "real data, 0 is one image repeated (mode collapse). Class accuracy: fraction of class-k samples the "
            f"extractor labels k. Fresh chains: {s.n_samples} unconditional samples and "
            f"{max(1, s.n_samples // num_classes)} per class, U(-1, 1) + {s.sgld_steps} steps of the run's "
            f"transition. Real-data floor: {inputs.real_info}.{own}"
            + bootstrap_sentence(s, "the samples")
            + (
                f" The bootstrap covers {is_} and class accuracy only: a resample repeats samples, which biases FID "
                "and the distance-based numbers (repeated samples sit at distance 0)."
                + intervals.describe(s.seed)
                if s.n_boot > 0
                else ""
            )
        )
    return text
