"""The sections of ``jemkit eval``, measured run by run on the shared inputs: accuracy (clean and
after refinement), calibration, OOD detection, robustness (PGD, optionally against the JEM
defence) and generation quality; each writes its figures into the evaluation's output folder.

Every section starts from the checkpoint's batch-norm buffers and reseeds the RNGs, so its
numbers do not depend on which other sections ran. Each number measured on test inputs gets a
``<key>_ci95: [low, high]`` sibling: a seeded percentile-bootstrap interval
(:mod:`~jemkit.evaluation.bootstrap`) over those inputs. The same seed and input count give the
same resampling indices, so the intervals of a run and its baseline are paired. The set-vs-set
sample metrics (FID, KID, precision/recall, diversity) get block-jackknife intervals instead
(:mod:`~jemkit.evaluation.intervals`).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jemkit.evaluation import bootstrap as bs
from jemkit.evaluation import figures, intervals
from jemkit.evaluation.calibration import expected_calibration_error, reliability_bins
from jemkit.evaluation.temperature import temperature_scaled_ece
from jemkit.evaluation.components import defence_transition, fresh_chain_init, refine_transition, run_transition_cfg
from jemkit.evaluation.detection import auroc, fpr_at_tpr
from jemkit.errors import EvalError
from jemkit.evaluation.diversity import class_diversity, precision_recall, relative_diversity
from jemkit.evaluation.features import extract
from jemkit.evaluation.generation import buffer_contents, fresh_samples, grid_order, sample_quality
from jemkit.evaluation.inputs import Inputs
from jemkit.evaluation.kid import kernel_inception_distance
from jemkit.evaluation.metric_names import metric_label
from jemkit.evaluation.pgd import pgd_attack
from jemkit.evaluation.progress import Steps
from jemkit.evaluation.protocol import DEFENCE_ATTACKS, describe_transition
from jemkit.evaluation.refine import DefendedClassifier, refine
from jemkit.evaluation.rundir import LoadedRun
from jemkit.evaluation.scores import SCORES, ood_scores, predict_probs
from jemkit.evaluation.settings import EvalSettings
from jemkit.performance import autocast
from jemkit.plugin_manager import PluginSet
from jemkit.rng import seed_everything

#: Folder of the figures, inside the evaluation's output folder.
FIGURES = "figures"

#: Sample-quality metrics whose labels name the feature extractor (``report.json``'s ``labels``).
LABELLED_METRICS = ("fid", "inception_score", "kid", "precision", "recall", "diversity")


def _batches(x: Tensor, size: int) -> list[Tensor]:
    return list(torch.split(x, size))


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

    @staticmethod
    def planned_phases(settings: EvalSettings, runs: int, reference: bool) -> int:
        """The number of progress tasks an evaluation of ``runs`` runs opens (``phase k/N``)."""
        per_run = sum(1 for section in ("acc", "ood", "robustness") if section in settings.sections)
        per_run += 2 if "generation" in settings.sections else 0  # sampling, then sample quality
        return per_run * runs + (1 if reference else 0)

    def _add_ci(
        self, target: dict[str, Any], key: str, statistic: bs.Statistic, *arrays: Any, groups: Any = None
    ) -> None:
        """``target[key + "_ci95"] = [low, high]``, the seeded bootstrap interval (nothing with ``--bootstrap 0``)."""
        if self.s.n_boot > 0:
            low, high = bs.bootstrap_ci(statistic, *arrays, n_boot=self.s.n_boot, seed=self.s.seed, groups=groups)
            target[f"{key}_ci95"] = [low, high]

    # ------------------------------------------------------------------ accuracy and calibration
    def accuracy(self, run: LoadedRun, probs: Tensor) -> dict[str, Any]:
        x, y, s = self.inputs.x_test, self.inputs.y_test, self.s
        transition, info = refine_transition(self.plugins, s, run)
        self._seed()
        refined_hits = []
        with self.steps.task(f"{run.name}: refined accuracy ({s.refine_steps} steps)", len(x)) as advance:
            for xb, yb in zip(_batches(x, s.batch_size), _batches(y, s.batch_size)):
                refined = refine(run.model, xb.to(self.device), transition, s.refine_steps, run.sampler.model_mode)
                with torch.no_grad():
                    refined_hits.append(run.model(refined).argmax(1).cpu() == yb)
                advance(len(xb))
        clean_hits, hits = probs.argmax(1) == y, torch.cat(refined_hits)
        nll = -torch.log(probs[torch.arange(len(y)), y].clamp(min=1e-300))  # per input, nats
        result: dict[str, Any] = {
            "clean": float(clean_hits.double().mean()),
            "refined": float(hits.double().mean()),
            "nll": float(nll.mean()),
            "n": len(y),
            "refine": {"steps": s.refine_steps, "transition": info},
        }
        for key, per_input in (("clean", clean_hits), ("refined", hits), ("nll", nll)):
            self._add_ci(result, key, bs.mean, per_input)
        return result

    def calibration(self, run: LoadedRun, probs: Tensor) -> dict[str, Any]:
        y, bins = self.inputs.y_test, self.s.bins
        ece = expected_calibration_error(probs, y, bins)
        table = reliability_bins(probs, y, bins)
        figures.reliability_diagram(
            table, ece, f"{run.name} (step {run.step})", self._figure(run, "reliability", f"{run.name}_reliability.png")
        )
        result: dict[str, Any] = {"ece": ece, "bins": bins, "n": len(y), "reliability": table}
        confidence, predicted = probs.max(dim=1)
        self._add_ci(result, "ece", bs.ece(bins), confidence, predicted == y)
        scaled = temperature_scaled_ece(probs, y, bins, seed=self.s.seed)
        result["temperature_scaled"] = {k: scaled[k] for k in ("ece", "temperature", "fitted_on")}
        scaled_confidence = scaled["probs"].max(dim=1).values
        self._add_ci(result["temperature_scaled"], "ece", bs.ece(bins), scaled_confidence, predicted == y)
        return result

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
                result[name] = {}
                for score in SCORES:
                    entry = {
                        "auroc": auroc(inside[score], outside[score]),
                        "fpr95": fpr_at_tpr(inside[score], outside[score]),
                    }
                    pair = (inside[score], outside[score])
                    self._add_ci(entry, "auroc", bs.auroc, *pair, groups=(0, 1))
                    self._add_ci(entry, "fpr95", bs.fpr_at_tpr(0.95), *pair, groups=(0, 1))
                    result[name][score] = entry
                figures.score_histograms(
                    inside,
                    outside,
                    f"{run.name} (step {run.step}): {len(inside_x)} test inputs vs {len(x_out)} of {name}",
                    self._figure(run, f"ood_{name}", f"{run.name}_ood_{name}.png"),
                    aurocs={score: result[name][score]["auroc"] for score in SCORES},
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
            transition, info = defence_transition(self.plugins, s, run)
            defended = DefendedClassifier(
                run.model,
                transition,
                s.defence_steps,
                s.defence_copies,
                s.defence_noise,
                run.sampler.model_mode,
                attack=s.defence_attack,
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
                    point: dict[str, Any] = {"eps": e, "accuracy": float(plain[0].double().mean())}
                    self._add_ci(point, "accuracy", bs.mean, plain[0])
                    result["attacks"][norm].append(point)
                    advance(n)
                    if defended:
                        (adaptive,) = self._attack_correct(defended, [defended], norm, e)
                        hits = {"accuracy": adaptive, "transfer": plain[1], "worst": adaptive & plain[1]}
                        point = {"eps": e, **{key: float(h.double().mean()) for key, h in hits.items()}}
                        for key, h in hits.items():
                            self._add_ci(point, key, bs.mean, h)
                        result["defended"][norm].append(point)
                        advance(n)
        return result

    # ------------------------------------------------------------------ generation
    def _quality(self, x: Tensor, y: Tensor | None, source: str, run: LoadedRun) -> dict[str, Any]:
        """FID, IS and (labelled samples) class accuracy of ``x``; KID (mean, sd over subsets),
        diversity relative to the reference images (per class for labelled samples) and
        precision/recall against them; bootstrap intervals over the samples for IS and class accuracy,
        block-jackknife intervals for the set-vs-set numbers."""
        inputs, s = self.inputs, self.s
        assert inputs.extractor is not None and inputs.reference is not None
        assert inputs.reference_features is not None and inputs.reference_labels is not None
        features, logits = extract(inputs.extractor, x, s.batch_size, self.device)
        labels = y if (y is not None and inputs.extractor.data_set == str(run.cfg.data.name)) else None
        splits = min(s.is_splits, len(x))
        result = sample_quality(features, logits, inputs.reference, splits, labels)
        if s.n_boot > 0:
            self._add_ci(result["inception_score"], "mean", bs.inception_score(splits), logits)
            if labels is not None:
                self._add_ci(result, "class_accuracy", bs.mean, logits.argmax(1) == labels)
        # Distances and kernels on the evaluation's device (Inception features: 10,000 x 2,048).
        on_device, reference = features.to(self.device), inputs.reference_features.to(self.device)
        if len(features) >= 2:
            kid = kernel_inception_distance(on_device, reference, s.kid_subsets, s.kid_subset_size, s.seed)
            result["kid"] = {"mean": kid[0], "std": kid[1]}
            result["diversity"] = relative_diversity(on_device, reference)
        if len(features) > s.pr_k and len(reference) > s.pr_k:
            result["precision"], result["recall"] = precision_recall(reference, on_device, s.pr_k)
        if y is not None and len(features) >= 2:  # the labels the chains were conditioned on
            num_classes = int(run.context.num_classes or 1)
            result["class_diversity"] = class_diversity(
                on_device, y, reference, inputs.reference_labels, num_classes
            )
        if s.n_boot > 0:  # set-vs-set numbers: block-jackknife intervals (resampling would repeat samples)
            intervals.add_set_intervals(
                result, on_device, reference, s.pr_k, s.kid_subsets, s.seed, y, inputs.reference_labels,
                int(run.context.num_classes or 1),
            )
        result["labels"] = {key: metric_label(s.feature_extractor, key) for key in LABELLED_METRICS}
        result["protocol"] = {
            "samples": len(x),
            "source": source,
            "feature_extractor": s.feature_extractor,
            "weights": inputs.extractor.weights,
            "reference": inputs.reference_info,
            "is_splits": splits,
        }
        return result

    def _grid(
        self, run: LoadedRun, key: str, x: Tensor, per_row: int, start: str, rows: list[str] | None
    ) -> None:
        """A labelled sample grid: header with run, checkpoint step and chain start, one label per row."""
        header = f"{run.name}, checkpoint step {run.step}\n{start}"
        header += "\none row per class" if rows is not None else "\nunconditional: rows are not classes"
        figures.sample_grid(x, self._figure(run, key, f"{run.name}_{key}.png"), per_row, header, rows)

    def generation(self, run: LoadedRun) -> dict[str, Any]:
        s = self.s
        num_classes = int(run.context.num_classes or 1)
        per_class = max(1, s.n_samples // num_classes)
        init = fresh_chain_init(self.plugins, run.context)
        transition = describe_transition(run_transition_cfg(run))
        chain = f"U(-1, 1) + {s.sgld_steps} steps of {transition}, model in {run.sampler.model_mode} mode"
        y = torch.arange(num_classes).repeat_interleave(per_class)
        self._seed()
        with self.steps.task(f"{run.name}: sampling ({s.sgld_steps} steps)", len(y) + s.n_samples) as advance:
            common = (run.model, init, run.sampler.transition, s.sgld_steps, run.sampler.model_mode)
            batching = (s.batch_size, self.device, advance)
            graphs = run.sampler.cuda_graphs
            with autocast(self.device, run.performance):  # the precision the run trained with
                conditional = fresh_samples(*common, len(y), y, *batching, cuda_graphs=graphs)
                unconditional = fresh_samples(*common, s.n_samples, None, *batching, cuda_graphs=graphs)
        grid_n = min(len(unconditional), num_classes * s.grid_per_class)
        per_row = min(s.grid_per_class, per_class)  # one row per class
        fresh_start = f"init U(-1, 1), {s.sgld_steps} steps of {transition}"
        class_rows = [f"class {k}" for k in range(num_classes)]
        conditional_grid = conditional[grid_order(y, per_row)]
        self._grid(run, "fresh_conditional", conditional_grid, per_row, f"{fresh_start}, E(x, y)", class_rows)
        self._grid(run, "fresh_unconditional", unconditional[:grid_n], s.grid_per_class, f"{fresh_start}, E(x)", None)
        stored = buffer_contents(run.sampler)
        x_buf = y_buf = None
        if stored is not None:
            buffer, labels = stored
            pick = torch.randperm(len(buffer), generator=torch.Generator().manual_seed(s.seed))[: s.n_samples]
            x_buf, y_buf = buffer[pick], (labels[pick] if labels is not None else None)
        sets = 2 + (1 if x_buf is not None and len(x_buf) >= 2 else 0)
        result: dict[str, Any] = {"fresh": {}, "buffer": None}
        with self.steps.task(f"{run.name}: sample quality (features, KID, precision/recall)", sets) as advance:
            result["fresh"]["conditional"] = self._quality(
                conditional, y, f"fresh chains, class-conditional E(x, y), {per_class} per class: {chain}", run
            )
            advance(1)
            result["fresh"]["unconditional"] = self._quality(
                unconditional, None, f"fresh chains, unconditional E(x): {chain}", run
            )
            advance(1)
            if sets == 3:
                assert x_buf is not None
                source = (
                    f"{len(x_buf)} random entries of the run's replay buffer ({len(buffer)} slots) at the checkpoint"
                )
                result["buffer"] = self._quality(x_buf, y_buf, source, run)
                advance(1)
        if result["buffer"] is not None and stored is not None and x_buf is not None:
            buffer, labels = stored
            per_row = s.grid_per_class
            start = f"replay buffer ({len(buffer)} chains) as stored at the checkpoint"
            if labels is not None:  # a class-conditional buffer: one row per class
                per_row = min(per_row, int((labels == 0).sum()))
                self._grid(run, "buffer", buffer[grid_order(labels, per_row)], per_row, start, class_rows)
            else:
                x_grid = x_buf[: min(len(x_buf), num_classes * per_row)]
                self._grid(run, "buffer", x_grid, per_row, start, None)
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
