"""Evaluation of trained runs: what the JEM paper measures (``jemkit eval``).

Modules, one job each: :mod:`~jemkit.evaluation.settings` (defaults per data set, flags),
:mod:`~jemkit.evaluation.rundir` (open a run at a checkpoint), :mod:`~jemkit.evaluation.scores`
(``p(y|x)`` and the OOD scores), :mod:`~jemkit.evaluation.calibration`,
:mod:`~jemkit.evaluation.detection` (AUROC, FPR95), :mod:`~jemkit.evaluation.pgd`,
:mod:`~jemkit.evaluation.refine` (refinement by a transition, the JEM defence),
:mod:`~jemkit.evaluation.frechet`, :mod:`~jemkit.evaluation.inception_score`,
:mod:`~jemkit.evaluation.features` (features of a :class:`~jemkit.contracts.FeatureExtractor`),
:mod:`~jemkit.evaluation.generation`, :mod:`~jemkit.evaluation.figures`,
:mod:`~jemkit.evaluation.components` (OOD sets, feature extractor, refinement transition and
fresh-chain initialiser, looked up by name), :mod:`~jemkit.evaluation.inputs` (the shared inputs,
drawn once), :mod:`~jemkit.evaluation.sections` (each section, run by run),
:mod:`~jemkit.evaluation.protocol` (the report's protocol text), :mod:`~jemkit.evaluation.report`,
:mod:`~jemkit.evaluation.bootstrap` (seeded 95% intervals), :mod:`~jemkit.evaluation.kid`,
:mod:`~jemkit.evaluation.diversity` (diversity, precision/recall),
:mod:`~jemkit.evaluation.metric_names` ("digits-FID" vs "Inception FID"),
:mod:`~jemkit.evaluation.baseline` (a baseline must share the test split),
:mod:`~jemkit.evaluation.outdir` (one new folder per evaluation, ``eval/latest``),
:mod:`~jemkit.evaluation.progress` and :mod:`~jemkit.evaluation.runner` (the whole command,
orchestration only).

Conventions: inputs live in ``[-1, 1]`` and so do PGD epsilons (``8/255`` in ``[0, 1]`` units is
``16/255`` here). Lower energy means more likely; ``log p(x) = -E(x)`` up to a constant. OOD
detection treats in-distribution inputs as the positive class, with scores oriented so that
higher means more in-distribution.

``RUN_DIR/eval/<timestamp>/report.json`` (or ``--out DIR/report.json``; ``RUN_DIR/eval/latest``
names the newest)::

    {
      "format": "jemkit-eval/1", "jemkit_version": str, "created": ISO-8601 time,
      "command": "jemkit eval RUN_DIR --flag value ...",   # the options given

      "runs": {                                   # the evaluated run first, then the --baseline run
        "<run name>": {                           # name = the run directory's name
          "run_dir": str, "recipe": str, "data": str,
          "checkpoint": {"path": str, "step": int},
          "seconds": {"<section>": float},        # wall time per section
          # every number measured on test inputs has a sibling "<key>_ci95": [low, high], its
          # 95% bootstrap interval (absent with --bootstrap 0): clean_ci95, nll_ci95, ece_ci95,
          # auroc_ci95, fpr95_ci95, accuracy_ci95 (robustness points), ...
          "accuracy": {"clean": p, "refined": p, "nll": nats, "n": int,
                       "refine": {"steps": K, "transition": {"source": "run"|"cli", "name": ..., ...}}},
          "calibration": {"ece": p, "bins": int, "n": int,
                          "temperature_scaled": {"ece": p, "temperature": [T, T], "fitted_on": str},
                          "reliability": {"lower": [..], "upper": [..], "confidence": [..],
                                          "accuracy": [..], "count": [..]}},
          "ood": {"<set>": {"log_px"|"max_pyx"|"grad_norm": {"auroc": p, "fpr95": p}}},
          "robustness": {"n": int,
                         "attacks": {"linf"|"l2": [{"eps": float, "accuracy": p}, ...]},
                         # with --defence only: adaptive attack on the defence, transfer of the
                         # undefended model's adversarial inputs, and the per-input worst of both
                         "defended": {"linf"|"l2": [{"eps", "accuracy": p, "transfer": p, "worst": p}]},
                         "defence": {"steps", "copies", "noise", "transition", "attack", ...}},
          "generation": {
            "fresh": {"conditional": Q, "unconditional": Q},
            "buffer": Q or null},                 # null when the run's sampler has no replay buffer
          "figures": {"<key>": "figures/<file>.png"}
        }
      },
      "data": {"name", "input_shape", "num_classes", "test_examples", "ood_examples": {"<set>": int}},
      "real_data": {"fid": float, "kid": {"mean", "std"}, "protocol": str} or null,   # real images: the floor
      "settings": {...every setting used, resolved, plus OOD-set and extractor parameters,
                   "bootstrap": {"n_boot", "level", "seed"}},
      "protocol": {"accuracy"|"calibration"|"ood"|"robustness"|"generation": str},
      "figures": {"robustness_<norm>": "figures/robustness_<norm>.png"}
    }

where ``p`` is a number in ``[0, 1]`` and ``Q`` is ``{"fid": float >= 0, "inception_score":
{"mean", "std", "mean_ci95"}, "class_accuracy": p, "class_accuracy_ci95", "per_class_accuracy":
[p, ...] (labelled samples whose classes the extractor knows), "kid": {"mean", "std"} (sd over
subsets), "precision": p, "recall": p, "diversity": float >= 0 (1 = as varied as the reference
images), "class_diversity": {"per_class": [float or null], "mean"} (class-conditional samples),
"labels": {"fid": "digits-FID" | "Inception FID" | ..., "inception_score", "kid", "precision",
"recall", "diversity"}, "protocol": {"samples", "source", "feature_extractor", "weights",
"reference", "is_splits"}}``. Sections left out with ``--only`` are absent.
"""
