"""``jemkit eval``: evaluate one run (and optionally a baseline run) and write ``RUN_DIR/eval/``.

Order of work: resolve the settings, open the runs, build and check every OOD set and the feature
extractor (so that a bad name or a missing file fails before any long computation), draw the
shared inputs once (test split, OOD sets, reference features; every run sees the very same
inputs), evaluate each run section by section, then write figures, ``report.json`` and
``report.md`` into a temporary folder that replaces ``RUN_DIR/eval`` only when all of it is done.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import Dataset

from jemkit import __version__
from jemkit.build import resolve_device, seed_everything
from jemkit.config import DEFAULT_SAMPLER, build_params
from jemkit.contracts import BuildContext, ChainInit, Transition
from jemkit.errors import JemkitError
from jemkit.evaluation import figures
from jemkit.evaluation.calibration import expected_calibration_error, reliability_bins
from jemkit.evaluation.detection import auroc, fpr_at_tpr
from jemkit.errors import EvalError
from jemkit.evaluation.features import FeatureExtractor, extract
from jemkit.evaluation.frechet import frechet_distance, gaussian_stats
from jemkit.evaluation.generation import buffer_contents, fresh_samples, grid_order, sample_quality
from jemkit.evaluation.pgd import STEP_FACTOR, pgd_attack
from jemkit.evaluation.progress import Steps
from jemkit.evaluation.refine import DefendedClassifier, refine
from jemkit.evaluation.report import write_report
from jemkit.evaluation.rundir import LoadedRun, load_run, read_run_config
from jemkit.evaluation.scores import SCORES, ood_scores, predict_probs
from jemkit.evaluation.settings import EvalSettings, resolve_settings
from jemkit.plugin_manager import PluginSet
from jemkit.samples import save_sample_grid

#: Name of the folder the report is written to, inside the evaluated run directory.
EVAL_DIR = "eval"
FIGURES = "figures"


@dataclass
class Inputs:
    """What every evaluated run sees: the same tensors, drawn once."""

    x_test: Tensor
    y_test: Tensor
    ood: dict[str, Tensor] = field(default_factory=dict)
    ood_params: dict[str, Any] = field(default_factory=dict)
    extractor: FeatureExtractor | None = None
    extractor_params: dict[str, Any] = field(default_factory=dict)
    reference: tuple[Tensor, Tensor] | None = None
    reference_info: str = ""
    real_fid: float | None = None
    real_info: str = ""


# --------------------------------------------------------------------------- building blocks


def materialise(dataset: Dataset, limit: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """Inputs and labels of ``dataset`` as tensors: all items, or a seeded random subset of ``limit`` (index order)."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None and limit < n:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
    else:
        index = list(range(n))
    xs, ys = [], []
    for i in index:
        x, y = dataset[i][:2]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}


def build_ood_sets(
    plugins: PluginSet, settings: EvalSettings, context: BuildContext
) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """The OOD data sets named in the settings, checked against the model's input shape."""
    registry = plugins.registries["ood"]
    stray = sorted(set(settings.ood_params) - set(settings.ood_sets))
    if stray:
        raise EvalError(
            f"--ood-param sets parameters of {', '.join(map(repr, stray))}, which is not among --ood-sets "
            f"({','.join(settings.ood_sets)}). Add it to --ood-sets or drop the parameter."
        )
    components = {name: registry.get(name) for name in settings.ood_sets}  # unknown: did-you-mean error
    sets, used = {}, {}
    for name, component in components.items():
        params = build_params(
            component.params, settings.ood_params.get(name, {}), f"ood.{name}", "--ood-param", f"OOD set {name!r}"
        )
        try:
            dataset = component.factory(params, context)
            first = dataset[0][0] if len(dataset) else None
        except JemkitError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise EvalError(f"OOD set {name!r} could not be built: {exc}. Leave it out of --ood-sets.") from None
        if first is None or tuple(first.shape) != tuple(context.input_shape or ()):
            got = "no inputs" if first is None else f"inputs of shape {tuple(first.shape)}"
            raise EvalError(
                f"OOD set {name!r} yields {got}, but the model takes inputs of shape {context.input_shape}. "
                "Choose OOD sets made for this data set (see `jemkit list-plugins`)."
            )
        sets[name], used[name] = dataset, _params_dict(params)
    return sets, used


def build_extractor(
    plugins: PluginSet, settings: EvalSettings, context: BuildContext
) -> tuple[FeatureExtractor, dict[str, Any]]:
    """The feature extractor for FID/IS (its weights loaded or trained now, before any sampling)."""
    component = plugins.registries["feature_extractor"].get(settings.feature_extractor)
    raw = dict(settings.extractor_params)
    if settings.inception_weights and settings.feature_extractor == "inception":
        raw["weights"] = settings.inception_weights
    params = build_params(
        component.params,
        raw,
        f"feature_extractor.{component.name}",
        "--extractor-param",
        f"feature extractor {component.name!r}",
    )
    try:
        extractor = component.factory(params, context)
    except JemkitError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise EvalError(f"Feature extractor {component.name!r} could not be built: {exc}.") from None
    if not isinstance(extractor, FeatureExtractor):
        raise EvalError(f"Feature extractor {component.name!r} is not a jemkit.evaluation.features.FeatureExtractor.")
    return extractor.to(context.device).eval(), _params_dict(params)


def _transition_cfg(run: LoadedRun) -> dict[str, Any]:
    node = (run.cfg.get("sampler") or {}).get("transition") or DEFAULT_SAMPLER["transition"]
    if isinstance(node, dict):
        return dict(node)
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def refine_transition(plugins: PluginSet, settings: EvalSettings, run: LoadedRun) -> tuple[Transition, dict[str, Any]]:
    """The transition used for refinement and the defence, and its description for the report."""
    if settings.refine_step_size is None:
        return run.sampler.transition, {"source": "run", **_transition_cfg(run), "model_mode": run.sampler.model_mode}
    component = plugins.registries["transition"].get("sgld")
    raw = {"step_size": settings.refine_step_size, "noise": settings.refine_noise}
    params = build_params(component.params, raw, "refine", "--refine-step-size/--refine-noise", "SGLD")
    return component.factory(params, run.context), {
        "source": "cli",
        "name": "sgld",
        **raw,
        "model_mode": run.sampler.model_mode,
    }


#: How each ``--defence-attack`` passes gradients through the refinement, for the report.
DEFENCE_ATTACKS = {
    "end_to_end": "end to end: exact gradients through every SGLD step (second-order autograd) + EOT "
    "(logits averaged over fresh noisy copies in every forward pass)",
    "bpda": "BPDA (refinement treated as the identity in the backward pass) + EOT (logits averaged over "
    "fresh noisy copies in every forward pass)",
}


def sgld_settings(plugins: PluginSet, info: dict[str, Any]) -> tuple[float, float]:
    """``(step_size, noise)`` of a refinement transition that is SGLD (``sgld``, or ``langevin`` with noise
    ``sqrt(2 * step_size)``), for the end-to-end attack; any other transition is an :class:`EvalError`."""
    name = info.get("name")
    if name not in ("sgld", "langevin"):
        raise EvalError(
            f"--defence-attack end_to_end differentiates SGLD steps, but the refinement transition is {name!r}. "
            "Use --defence-attack bpda, or refine with SGLD via --refine-step-size and --refine-noise."
        )
    component = plugins.registries["transition"].get(name)
    fields = {f.name for f in dataclasses.fields(component.params)} if component.params else set()
    params = build_params(component.params, {k: v for k, v in info.items() if k in fields}, "refine", "jemkit eval")
    step = float(params.step_size)
    return step, (float(params.noise) if name == "sgld" else math.sqrt(2.0 * step))


def uniform_init(plugins: PluginSet, context: BuildContext) -> ChainInit:
    """Fresh-chain initialiser: the registered ``uniform`` chain init, ``U(-1, 1)``."""
    component = plugins.registries["chain_init"].get("uniform")
    return component.factory(build_params(component.params, {}, "uniform", "jemkit eval"), context)


def _batches(x: Tensor, size: int) -> list[Tensor]:
    return list(torch.split(x, size))


# --------------------------------------------------------------------------- sections


class Evaluation:
    """One ``jemkit eval`` invocation: runs, settings, shared inputs and the temporary output folder."""

    def __init__(
        self,
        plugins: PluginSet,
        runs: list[LoadedRun],
        settings: EvalSettings,
        inputs: Inputs,
        out: Path,
        steps: Steps,
        device: torch.device,
    ) -> None:
        self.plugins = plugins
        self.runs = runs
        self.s = settings
        self.inputs = inputs
        self.out = out
        self.steps = steps
        self.device = device
        self.figures: dict[str, dict[str, str]] = {run.name: {} for run in runs}

    def _figure(self, run: LoadedRun | None, key: str, filename: str) -> Path:
        path = self.out / FIGURES / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figures.setdefault(run.name if run else "all", {})[key] = f"{FIGURES}/{filename}"
        return path

    def _seed(self) -> None:
        seed_everything(self.s.seed)

    # ------------------------------------------------------------------ accuracy and calibration
    def accuracy(self, run: LoadedRun, probs: Tensor) -> dict[str, Any]:
        x, y, s = self.inputs.x_test, self.inputs.y_test, self.s
        transition, info = refine_transition(self.plugins, s, run)
        self._seed()
        correct = 0
        with self.steps.task(f"{run.name}: refined accuracy ({s.refine_steps} steps)", len(x)) as advance:
            for xb, yb in zip(_batches(x, s.batch_size), _batches(y, s.batch_size)):
                refined = refine(run.model, xb.to(self.device), transition, s.refine_steps, run.sampler.model_mode)
                with torch.no_grad():
                    correct += int((run.model(refined).argmax(1).cpu() == yb).sum())
                advance(len(xb))
        nll = -torch.log(probs[torch.arange(len(y)), y].clamp(min=1e-300)).mean()
        return {
            "clean": float((probs.argmax(1) == y).double().mean()),
            "refined": correct / len(y),
            "nll": float(nll),
            "n": len(y),
            "refine": {"steps": s.refine_steps, "transition": info},
        }

    def calibration(self, run: LoadedRun, probs: Tensor) -> dict[str, Any]:
        y, bins = self.inputs.y_test, self.s.bins
        ece = expected_calibration_error(probs, y, bins)
        table = reliability_bins(probs, y, bins)
        figures.reliability_diagram(
            table, ece, run.name, self._figure(run, "reliability", f"{run.name}_reliability.png")
        )
        return {"ece": ece, "bins": bins, "n": len(y), "reliability": table}

    # ------------------------------------------------------------------ OOD detection
    def ood(self, run: LoadedRun) -> dict[str, Any]:
        s, inside_x = self.s, self.inputs.x_test[: self.s.ood_n]
        total = len(inside_x) + sum(len(v) for v in self.inputs.ood.values())
        result: dict[str, Any] = {}
        with self.steps.task(f"{run.name}: OOD scores", total) as advance:
            inside = _finite(ood_scores(run.model, inside_x, s.batch_size, self.device), run, "the test inputs")
            advance(len(inside_x))
            for name, x_out in self.inputs.ood.items():
                outside = _finite(ood_scores(run.model, x_out, s.batch_size, self.device), run, f"OOD set {name!r}")
                advance(len(x_out))
                result[name] = {
                    score: {
                        "auroc": auroc(inside[score], outside[score]),
                        "fpr95": fpr_at_tpr(inside[score], outside[score]),
                    }
                    for score in SCORES
                }
                figures.score_histograms(
                    inside,
                    outside,
                    f"{run.name}: test vs {name}",
                    self._figure(run, f"ood_{name}", f"{run.name}_ood_{name}.png"),
                )
        return result

    # ------------------------------------------------------------------ robustness
    def _attack_correct(self, classifier: Any, judges: list[Any], norm: str, eps: float) -> list[Tensor]:
        """PGD against ``classifier`` on the attacked test inputs; per judge (a classifier), whether
        it still labels each adversarial input correctly (bool ``[n]``)."""
        s = self.s
        x, y = self.inputs.x_test[: s.robust_n], self.inputs.y_test[: s.robust_n]
        self._seed()
        generator = torch.Generator().manual_seed(s.seed)
        correct: list[list[Tensor]] = [[] for _ in judges]
        for xb, yb in zip(_batches(x, s.batch_size), _batches(y, s.batch_size)):
            xb, yb = xb.to(self.device), yb.to(self.device)
            adv = pgd_attack(
                classifier, xb, yb, norm, eps, s.pgd_steps, random_start=s.pgd_random_start, generator=generator
            )
            with torch.no_grad():
                for k, judge in enumerate(judges):
                    correct[k].append((judge(adv).argmax(1) == yb).cpu())
        return [torch.cat(c) for c in correct]

    def robustness(self, run: LoadedRun) -> dict[str, Any]:
        s = self.s
        eps = {"linf": s.eps_linf, "l2": s.eps_l2}
        n = min(s.robust_n, len(self.inputs.x_test))
        result: dict[str, Any] = {"n": n, "attacks": {norm: [] for norm in s.norms}}
        defended = None
        if s.defence:
            transition, info = refine_transition(self.plugins, s, run)
            sgld = sgld_settings(self.plugins, info) if s.defence_attack == "end_to_end" else None
            defended = DefendedClassifier(
                run.model,
                transition,
                s.defence_steps,
                s.defence_copies,
                s.defence_noise,
                run.sampler.model_mode,
                attack=s.defence_attack,
                sgld=sgld,
            )
            result["defended"] = {norm: [] for norm in s.norms}
            result["defence"] = {
                "steps": s.defence_steps,
                "copies": s.defence_copies,
                "noise": s.defence_noise,
                "transition": info,
                "attack": DEFENCE_ATTACKS[s.defence_attack],
                "transfer": "the defended model judged on the adversarial inputs crafted against the undefended one",
                "worst": "an input counts only if the defended model survives the adaptive and the transfer attack",
            }
        total = sum(len(eps[norm]) for norm in s.norms) * n * (2 if defended else 1)
        with self.steps.task(f"{run.name}: PGD", total) as advance:
            for norm in s.norms:
                for e in eps[norm]:
                    judges = [run.model] + ([defended] if defended else [])
                    plain = self._attack_correct(run.model, judges, norm, e)
                    result["attacks"][norm].append({"eps": e, "accuracy": float(plain[0].double().mean())})
                    advance(n)
                    if defended:
                        (adaptive,) = self._attack_correct(defended, [defended], norm, e)
                        transfer = plain[1]
                        result["defended"][norm].append(
                            {
                                "eps": e,
                                "accuracy": float(adaptive.double().mean()),
                                "transfer": float(transfer.double().mean()),
                                "worst": float((adaptive & transfer).double().mean()),
                            }
                        )
                        advance(n)
        return result

    # ------------------------------------------------------------------ generation
    def _quality(self, x: Tensor, y: Tensor | None, source: str, run: LoadedRun) -> dict[str, Any]:
        inputs, s = self.inputs, self.s
        assert inputs.extractor is not None and inputs.reference is not None
        features, logits = extract(inputs.extractor, x, s.batch_size, self.device)
        labels = y if (y is not None and inputs.extractor.data_set == str(run.cfg.data.name)) else None
        result = sample_quality(features, logits, inputs.reference, min(s.is_splits, len(x)), labels)
        result["protocol"] = {
            "samples": len(x),
            "source": source,
            "feature_extractor": s.feature_extractor,
            "weights": inputs.extractor.weights,
            "reference": inputs.reference_info,
            "is_splits": min(s.is_splits, len(x)),
        }
        return result

    def generation(self, run: LoadedRun) -> dict[str, Any]:
        s = self.s
        num_classes = int(run.context.num_classes or 1)
        per_class = max(1, s.n_samples // num_classes)
        init = uniform_init(self.plugins, run.context)
        transition = _describe(_transition_cfg(run))
        chain = f"U(-1, 1) + {s.sgld_steps} steps of {transition}, model in {run.sampler.model_mode} mode"
        y = torch.arange(num_classes).repeat_interleave(per_class)
        self._seed()
        with self.steps.task(f"{run.name}: sampling ({s.sgld_steps} steps)", len(y) + s.n_samples) as advance:
            common = (run.model, init, run.sampler.transition, s.sgld_steps, run.sampler.model_mode)
            batching = (s.batch_size, self.device, advance)
            graphs = run.sampler.cuda_graphs
            conditional = fresh_samples(*common, len(y), y, *batching, cuda_graphs=graphs)
            unconditional = fresh_samples(*common, s.n_samples, None, *batching, cuda_graphs=graphs)
        grid_n = min(len(unconditional), num_classes * s.grid_per_class)
        per_row = min(s.grid_per_class, per_class)  # one row per class
        save_sample_grid(
            conditional[grid_order(y, per_row)],
            self._figure(run, "fresh_conditional", f"{run.name}_fresh_conditional.png"),
            nrow=per_row,
        )
        save_sample_grid(
            unconditional[:grid_n],
            self._figure(run, "fresh_unconditional", f"{run.name}_fresh_unconditional.png"),
            nrow=s.grid_per_class,
        )
        result: dict[str, Any] = {
            "fresh": {
                "conditional": self._quality(
                    conditional, y, f"fresh chains, class-conditional E(x, y), {per_class} per class: {chain}", run
                ),
                "unconditional": self._quality(unconditional, None, f"fresh chains, unconditional E(x): {chain}", run),
            },
            "buffer": None,
        }
        stored = buffer_contents(run.sampler)
        if stored is not None:
            buffer, labels = stored
            pick = torch.randperm(len(buffer), generator=torch.Generator().manual_seed(s.seed))[: s.n_samples]
            x_buf, y_buf = buffer[pick], (labels[pick] if labels is not None else None)
            if len(x_buf) >= 2:
                source = (
                    f"{len(x_buf)} random entries of the run's replay buffer ({len(buffer)} slots) at the checkpoint"
                )
                result["buffer"] = self._quality(x_buf, y_buf, source, run)
                per_row = s.grid_per_class
                if labels is not None:  # a class-conditional buffer: one row per class
                    per_row = min(per_row, int((labels == 0).sum()))
                    x_grid = buffer[grid_order(labels, per_row)]
                else:
                    x_grid = x_buf[: min(len(x_buf), num_classes * per_row)]
                save_sample_grid(x_grid, self._figure(run, "buffer", f"{run.name}_buffer.png"), nrow=per_row)
        return result

    # ------------------------------------------------------------------ all runs
    def run_all(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        s = self.s
        for run in self.runs:
            entry: dict[str, Any] = {
                "run_dir": str(run.run_dir),
                "recipe": str(run.cfg.get("name")),
                "data": str(run.cfg.data.name),
                "checkpoint": {"path": str(run.checkpoint), "step": run.step},
                "seconds": {},
            }
            # Sampling in train mode (JEM++) updates batch-norm statistics; every section starts
            # from the checkpoint's buffers so that results do not depend on section order.
            buffers = {name: b.detach().clone() for name, b in run.model.named_buffers()}
            probs = None
            if "acc" in s.sections or "calibration" in s.sections:
                probs = predict_probs(run.model, self.inputs.x_test, s.batch_size, self.device)
            sections = (
                ("acc", "accuracy", functools.partial(self.accuracy, run, probs)),
                ("calibration", "calibration", functools.partial(self.calibration, run, probs)),
                ("ood", "ood", functools.partial(self.ood, run)),
                ("robustness", "robustness", functools.partial(self.robustness, run)),
                ("generation", "generation", functools.partial(self.generation, run)),
            )
            for section, key, compute in sections:
                if section in s.sections:
                    _restore_buffers(run, buffers)
                    t0 = time.perf_counter()
                    entry[key] = compute()
                    entry["seconds"][key] = round(time.perf_counter() - t0, 2)
            results[run.name] = entry
        if "robustness" in s.sections:
            for norm in s.norms:
                curves: dict[str, list[tuple[float, float]]] = {}
                for name, entry in results.items():
                    curves[name] = [(p["eps"], p["accuracy"]) for p in entry["robustness"]["attacks"][norm]]
                    if "defended" in entry["robustness"]:
                        curves[f"{name} (defended, worst case)"] = [
                            (p["eps"], p["worst"]) for p in entry["robustness"]["defended"][norm]
                        ]
                figures.robustness_curves(
                    curves, norm, self._figure(None, f"robustness_{norm}", f"robustness_{norm}.png")
                )
        for name, entry in results.items():
            entry["figures"] = self.figures.get(name, {})
        return results


def _restore_buffers(run: LoadedRun, buffers: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, value in run.model.named_buffers():
            value.copy_(buffers[name])


def _finite(scores: dict[str, Tensor], run: LoadedRun, what: str) -> dict[str, Tensor]:
    bad = [name for name, values in scores.items() if not torch.isfinite(values).all()]
    if bad:
        raise EvalError(
            f"Run {run.name!r} gives non-finite OOD scores ({', '.join(bad)}) on {what}: its checkpoint "
            f"{str(run.checkpoint)!r} produces NaN or infinite outputs. Evaluate an earlier checkpoint (--checkpoint)."
        )
    return scores


def _describe(cfg: dict[str, Any]) -> str:
    name = cfg.get("name", "?")
    rest = ", ".join(f"{k} {v}" for k, v in cfg.items() if k not in ("name", "source", "model_mode"))
    return f"{name} ({rest})" if rest else str(name)


# --------------------------------------------------------------------------- protocol text


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


# --------------------------------------------------------------------------- entry point


def _unique_names(dirs: list[Path]) -> list[str]:
    names: list[str] = []
    for d in dirs:
        base = d.resolve().name or "run"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def _publish(tmp: Path, target: Path) -> None:
    """Replace ``target`` with the finished folder ``tmp`` (renames on the same file system)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def evaluate(
    plugins: PluginSet,
    run_dir: Path,
    baseline_dir: Path | None,
    overrides: dict[str, Any],
    progress: Any = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate ``run_dir`` (and ``baseline_dir``); returns the report and the written ``RUN_DIR/eval`` path."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    data_name = str(cfg.data.name) if "data" in cfg and "name" in cfg.data else "?"
    settings = resolve_settings(data_name, overrides)
    device = resolve_device(settings.device)
    dirs = [run_dir] + ([Path(baseline_dir)] if baseline_dir is not None else [])
    names = _unique_names(dirs)

    primary, data = load_run(plugins, run_dir, names[0], settings.checkpoint, device)
    assert data is not None
    runs = [primary]
    if baseline_dir is not None:
        base_cfg = read_run_config(Path(baseline_dir))
        base_data = str(base_cfg.data.name) if "data" in base_cfg and "name" in base_cfg.data else "?"
        if base_data != data_name:
            raise EvalError(
                f"The baseline run {str(baseline_dir)!r} was trained on {base_data!r}, the evaluated run on "
                f"{data_name!r}; a baseline must share the data set (its inputs and classes)."
            )
        runs.append(load_run(plugins, Path(baseline_dir), names[1], settings.checkpoint, device, primary.context)[0])
    context = primary.context

    # Everything that can fail on a name or a missing file, before any long computation.
    ood_sets, ood_params = build_ood_sets(plugins, settings, context) if "ood" in settings.sections else ({}, {})
    extractor, extractor_params = (None, {})
    if "generation" in settings.sections:
        extractor, extractor_params = build_extractor(plugins, settings, context)

    seed_everything(settings.seed)
    x_test, y_test = materialise(data.test, settings.max_test, settings.seed)
    inputs = Inputs(
        x_test=x_test, y_test=y_test, ood_params=ood_params, extractor=extractor, extractor_params=extractor_params
    )
    for name, dataset in ood_sets.items():
        seed_everything(settings.seed)
        inputs.ood[name] = materialise(dataset, settings.ood_n, settings.seed)[0]
    steps = Steps(progress)
    if extractor is not None:
        train_split = data.train_plain or data.train
        seed_everything(settings.seed)
        if settings.fid_reference == "test":
            reference_x, other_name = x_test, "train"
            real_x = materialise(train_split, settings.n_samples, settings.seed)[0]
        else:
            reference_x, other_name = materialise(train_split, None, settings.seed)[0], "test"
            real_x = x_test
        with steps.task("reference features", len(reference_x) + len(real_x)) as advance:
            ref_features = extract(extractor, reference_x, settings.batch_size, device)[0]
            advance(len(reference_x))
            real_features = extract(extractor, real_x, settings.batch_size, device)[0]
            advance(len(real_x))
        inputs.reference = gaussian_stats(ref_features)
        inputs.reference_info = f"{len(reference_x)} images of the {data_name!r} {settings.fid_reference} split"
        inputs.real_fid = frechet_distance(*gaussian_stats(real_features), *inputs.reference)
        inputs.real_info = f"FID of {len(real_x)} real {other_name} images against the same reference"

    target = run_dir / EVAL_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{EVAL_DIR}-tmp-", dir=run_dir))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the report is an ordinary folder
    try:
        evaluation = Evaluation(plugins, runs, settings, inputs, tmp, steps, device)
        results = evaluation.run_all()
        report = {
            "format": "jemkit-eval/1",
            "jemkit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": results,
            "data": {
                "name": data_name,
                "input_shape": list(context.input_shape or ()),
                "num_classes": context.num_classes,
                "test_examples": len(x_test),
                "ood_examples": {name: len(x) for name, x in inputs.ood.items()},
            },
            "real_data": None if inputs.real_fid is None else {"fid": inputs.real_fid, "protocol": inputs.real_info},
            "settings": {
                **settings.to_dict(),
                "ood_params": ood_params,
                "extractor_params": extractor_params,
                "device": str(device),
            },
            "protocol": protocol(settings, inputs, data_name, int(context.num_classes or 1)),
            "figures": evaluation.figures.get("all", {}),
        }
        _check_finite(report)
        write_report(tmp, report)
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report, target


def _check_finite(node: Any, path: str = "report") -> None:
    """NaN or infinite numbers mean a broken measurement: fail instead of writing them."""
    if isinstance(node, float) and not math.isfinite(node):
        raise EvalError(f"{path} is {node}: the model produced non-finite outputs; nothing was written.")
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, f"{path}[{i}]")
