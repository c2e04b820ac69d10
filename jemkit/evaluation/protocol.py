"""The protocol text of ``jemkit eval``'s report: one sentence per section saying exactly how its
numbers were measured, so that a report can be read (and reproduced) without the code."""

from __future__ import annotations

from typing import Any

from jemkit.evaluation.inputs import Inputs
from jemkit.evaluation.pgd import STEP_FACTOR
from jemkit.evaluation.settings import EvalSettings

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


def protocol(settings: EvalSettings, inputs: Inputs, data_name: str, num_classes: int) -> dict[str, str]:
    """One sentence per section saying exactly how its numbers were measured."""
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
            f"{refine_how} on E(x), model in its sampler mode. NLL in nats."
        ),
        "calibration": (
            f"Expected calibration error: L1 gap between accuracy and mean confidence over {s.bins} equal-width "
            "confidence bins, weighted by bin size (torchmetrics MulticlassCalibrationError), on the same test inputs."
        ),
        "ood": (
            f"In-distribution = positive class: the first {min(s.ood_n, n_test)} test inputs; OOD inputs: "
            + ", ".join(f"{name} {len(x)}" for name, x in inputs.ood.items())
            + f" (at most {s.ood_n} per set, a seeded subset). AUROC by torchmetrics BinaryAUROC; FPR95 = "
            "fraction of OOD inputs scoring at least the threshold that keeps 95% of the in-distribution inputs. "
            "Scores (higher = more in-distribution): log_px = -E(x) = logsumexp f(x); "
            "max_pyx = max_y p(y|x); grad_norm = "
            "-||d log p(x)/dx||_2."
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
        ),
    }
    if inputs.extractor is not None:
        text["generation"] = (
            f"FID: Fréchet distance between Gaussians fitted to {s.feature_extractor} features "
            f"({inputs.extractor.weights}) "
            f"of the samples and of {inputs.reference_info}. IS: exp(E KL(p(y|x) || p(y))) from the extractor's logits "
            f"over {s.is_splits} split(s). Class accuracy: fraction of class-k samples the extractor labels k. "
            f"Fresh chains: {s.n_samples} unconditional samples and {max(1, s.n_samples // num_classes)} per class, "
            f"U(-1, 1) + {s.sgld_steps} steps of the run's transition. Real-data floor: {inputs.real_info}."
        )
    return text
