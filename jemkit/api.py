"""The Python API: train, open and use jemkit runs from a script or a notebook.

Re-exported from :mod:`jemkit` (``import jemkit`` stays light: these load on first use)::

    run = jemkit.train("recipes/jem_digits.yaml", ["train.epochs=2"], out="runs/quick")
    run = jemkit.load_run("runs/quick")                  # no data set needed on disk
    logits = run.model.classify(x)                        # [N, C]
    scores = run.model.log_px(x)                          # [N], higher is more in-distribution
    x3 = run.sample(16, y=3, steps=100)                   # [16, *input_shape], p(x | y=3)
    run.summary["test/acc"], run.metrics[-1], run.config.sampler.steps

:func:`train` goes through exactly the code of ``jemkit run`` (the same run directory, checkpoints
and resume); :func:`load_run` through :func:`jemkit.run_open.open_run`, like ``jemkit sample``.
Inputs are float tensors ``[N, *input_shape]`` scaled to ``[-1, 1]`` (``run.data_info`` says
the shape, the classes and the preprocessing); energies follow jemkit's sign convention: lower is
more likely. Every problem a user can cause is a :class:`~jemkit.errors.JemkitError`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from jemkit import config as recipes
from jemkit.errors import JemkitError, RecipeError, RegistryError

#: What ``Run.sample(init=...)`` accepts: the run's own chain initialiser as the checkpoint left it
#: (its replay buffer), or fresh uniform noise in [-1, 1] (:data:`jemkit.defaults.FRESH_CHAIN_INIT`).
SAMPLE_INITS: tuple[str, ...] = ("buffer", "noise")
#: Inputs per forward pass in :class:`RunModel` (larger inputs are split into chunks).
BATCH_SIZE = 256
#: Recipe name of a dict or DictConfig recipe that sets none.
DEFAULT_NAME = "recipe"

Recipe = str | os.PathLike | Mapping[str, Any] | DictConfig


# --------------------------------------------------------------------------- recipes and components


def load_recipe(recipe: Recipe, overrides: Sequence[str] = ()) -> DictConfig:
    """A validated recipe: a YAML file path, a dict or a ``DictConfig``, with ``key=value`` overrides.

    A file is read as ``jemkit run`` reads it (its name defaults to the file name); a dict or
    DictConfig is copied (never modified) and named :data:`DEFAULT_NAME` when it sets no name.
    Component parameters are checked when the recipe is built (``train``), as on the command line.
    """
    overrides = _overrides(overrides)
    if isinstance(recipe, (str, os.PathLike)):
        return recipes.load_recipe(Path(recipe), overrides)
    if isinstance(recipe, DictConfig):
        cfg = recipe.copy()
    elif isinstance(recipe, Mapping):
        cfg = OmegaConf.create(dict(recipe))
    else:
        raise RecipeError(
            f"A recipe is a YAML file path, a dict or an OmegaConf DictConfig, got {type(recipe).__name__}. "
            "Pass e.g. 'recipes/jem_digits.yaml' or jemkit.load_recipe('recipes/jem_digits.yaml')."
        )
    source = "the recipe passed from Python"
    cfg = recipes.apply_overrides(cfg, overrides, source=source)
    if cfg.get("name") in (None, ""):
        cfg.name = DEFAULT_NAME
    recipes.check_structure(cfg, source=source)
    return cfg


def _overrides(overrides: Sequence[str] | str) -> list[str]:
    if isinstance(overrides, str):
        raise RecipeError(
            f"overrides must be a list of key=value strings, e.g. ['train.epochs=2'], not the string {overrides!r}."
        )
    items = [str(item) for item in overrides]
    for item in items:
        if item.startswith("-"):
            raise RecipeError(f"Override {item!r} is not of the form key=value (a key never starts with '-').")
    return items


def list_components(kind: str | None = None) -> list[dict[str, str]]:
    """Every registered component (of ``kind``, e.g. ``transition``), as ``jemkit list-plugins
    --json`` rows: ``plugin``, ``origin``, ``kind``, ``name``, ``description``."""
    from jemkit.cli.list_plugins import plugin_rows
    from jemkit.plugin_manager import load_plugins
    from jemkit.registry import KINDS

    plugins = load_plugins()
    if kind is None:
        return plugin_rows(plugins)
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"Unknown component kind {kind!r}.{hint} The kinds are {', '.join(KINDS)}.")
    return plugin_rows(plugins, list(plugins.registries[kind]))


# --------------------------------------------------------------------------- a trained run


class RunModel:
    """A run's trained model, for inputs ``[N, *input_shape]`` in ``[-1, 1]`` on any device.

    Every method runs without gradients, in evaluation mode, in float32, on the run's device, in
    chunks of :data:`BATCH_SIZE` inputs, and returns its result on the device of ``x``. The
    underlying ``torch.nn.Module`` (a :class:`~jemkit.contracts.JointEnergyModel`) is
    :attr:`module`.
    """

    def __init__(self, module: Any, device: torch.device, performance: Any) -> None:
        #: The :class:`~jemkit.contracts.JointEnergyModel` (eval mode, weights frozen).
        self.module = module
        self.device = device
        self._performance = performance

    def _apply(self, fn: Any, x: Tensor, y: Tensor | None = None) -> Tensor:
        from jemkit.performance import prepare_input

        if not isinstance(x, Tensor):
            raise JemkitError(f"Inputs must be a torch.Tensor [N, *input_shape], got {type(x).__name__}.")
        outputs = []
        with torch.no_grad():
            for start in range(0, len(x), BATCH_SIZE):
                chunk = prepare_input(x[start : start + BATCH_SIZE].to(self.device, torch.float32), self._performance)
                labels = None if y is None else y[start : start + BATCH_SIZE].to(self.device)
                outputs.append(fn(chunk, labels).float())
        return torch.cat(outputs).to(x.device) if outputs else torch.empty(0, device=x.device)

    def classify(self, x: Tensor) -> Tensor:
        """Logits ``[N, C]`` of ``p(y|x)`` (``softmax`` them for probabilities)."""
        return self._apply(lambda inputs, _: self.module(inputs), x)

    __call__ = classify

    def energy(self, x: Tensor, y: Tensor | int | None = None) -> Tensor:
        """Energies ``[N]``: ``E(x) = -logsumexp_y f(x)[y]``, or ``E(x, y) = -f(x)[y]`` given labels
        ``y`` (an int for all, or ``[N]``). Lower is more likely."""
        labels = None if y is None else _labels_for(y, len(x), getattr(self.module.head, "num_classes", None))
        return self._apply(lambda inputs, ys: self.module.energy(inputs, ys), x, labels)

    def log_px(self, x: Tensor) -> Tensor:
        """Unnormalised ``log p(x) = -E(x)`` ``[N]`` in nats, up to the model's unknown ``log Z``
        (so only differences between inputs mean something); higher is more in-distribution."""
        return -self.energy(x)


def _labels_for(y: Any, n: int, num_classes: int | None) -> Tensor:
    """``y`` (an int, a sequence or a tensor) as ``int64 [n]`` class indices, checked."""
    given = torch.as_tensor(y)
    if given.dtype.is_floating_point or given.dtype.is_complex or given.dtype == torch.bool:
        raise JemkitError(f"Class labels are integers (one int, or one per input), got {y!r}.")
    labels = given.long().reshape(-1).expand(n).clone() if given.dim() == 0 else given.long().reshape(-1)
    if len(labels) != n:
        raise JemkitError(f"Got {len(labels)} class labels for {n} inputs or samples; pass one label each, or one int.")
    if num_classes is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise JemkitError(f"Class labels must lie in [0, {num_classes - 1}] for this run, got {labels.unique().tolist()}.")
    return labels


class Run:
    """A trained run opened at one checkpoint (:func:`load_run`, :func:`train`)."""

    def __init__(self, opened: Any, plugins: Any) -> None:
        self._opened = opened
        self._plugins = plugins
        self._noise_sampler: Any = None
        #: The run directory.
        self.run_dir: Path = Path(opened.run_dir)
        #: The resolved recipe the run trained with (``RUN_DIR/config.yaml``).
        self.config: DictConfig = opened.cfg
        #: Optimiser steps of the loaded checkpoint (-1 if it does not say).
        self.step: int = int(opened.step)
        #: The checkpoint file that was loaded.
        self.checkpoint: Path = Path(opened.checkpoint)
        self.device: torch.device = opened.context.device
        #: The trained model: ``classify``, ``energy``, ``log_px``.
        self.model = RunModel(opened.model, self.device, opened.performance)
        #: Inputs and classes (shape, class names, preprocessing; :mod:`jemkit.data_info`).
        self.data_info = opened.data_info

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, step={self.step}, recipe={self.name!r})"

    @property
    def name(self) -> str:
        """The recipe's name."""
        return str(self.config.get("name", ""))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input without the batch dimension, e.g. ``(1, 8, 8)``."""
        return tuple(self._opened.context.input_shape)

    @property
    def num_classes(self) -> int:
        return int(self._opened.context.num_classes)

    @property
    def class_names(self) -> list[str] | None:
        """Name of each class, index by index (``None`` when the data set names none)."""
        names = self.data_info.class_names if self.data_info is not None else None
        return None if names is None else list(names)

    @property
    def summary(self) -> dict[str, Any]:
        """``RUN_DIR/summary.json`` (``test/acc``, ``steps``, ``wall_seconds``, ...); ``{}`` before
        the run has finished. Read afresh on each access."""
        import json

        path = self.run_dir / "summary.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """Every record of ``RUN_DIR/metrics.jsonl`` (``step``, ``train/loss``, ``test/acc``, ...;
        events carry ``event``), in order. Read afresh on each access."""
        from jemkit.runlog import read_metrics

        path = self.run_dir / "metrics.jsonl"
        return read_metrics(path) if path.is_file() else []

    @property
    def weights_from(self) -> str | None:
        """The plugin whose weights the model holds instead of the trained ones (``ema`` when the
        recipe asks for the weight average at inference), or ``None``."""
        return getattr(self._opened, "weights_from", None)

    @property
    def sampler(self) -> Any:
        """The run's :class:`~jemkit.sampler.Sampler` (initialiser with its replay buffer, transition)."""
        return self._opened.sampler

    def _sampler_for(self, init: str) -> Any:
        if init not in SAMPLE_INITS:
            raise JemkitError(f"init must be one of {', '.join(map(repr, SAMPLE_INITS))}, got {init!r}.")
        if init == "buffer":
            return self._opened.sampler
        if self._noise_sampler is None:
            from jemkit import defaults
            from jemkit.build import build_by_name
            from jemkit.sampler import Sampler

            own = self._opened.sampler
            fresh = build_by_name(
                self._plugins, "chain_init", defaults.FRESH_CHAIN_INIT, self._opened.context, source="init='noise'"
            )
            self._noise_sampler = Sampler(
                fresh, own.transition, own.steps, own.model_mode, own.freeze_weights, cuda_graphs=own.cuda_graphs
            )
        return self._noise_sampler

    def sample(
        self,
        n: int,
        y: int | Sequence[int] | Tensor | None = None,
        steps: int | None = None,
        init: str = "buffer",
        seed: int | None = None,
    ) -> Tensor:
        """``n`` samples ``[n, *input_shape]`` of ``p(x)``, or of ``p(x|y)`` given class ``y`` (an int
        for all, or ``n`` labels), on the run's device.

        The run's transition runs ``steps`` times (default: the recipe's ``sampler.steps``) from
        ``init``: ``buffer`` (the run's own initialiser as the checkpoint left it: the replay
        buffer, where each chain restarts from noise with the recipe's ``reinit_freq``) or ``noise``
        (uniform in [-1, 1]). The buffer is not changed. With ``seed`` the draw is reproducible and
        the global RNGs are left as they were. Sampling uses the precision the run trained with.
        """
        from jemkit.performance import autocast
        from jemkit.rng import preserved_rng

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise JemkitError(f"n must be a positive number of samples, got {n!r}.")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise JemkitError(f"steps must be a non-negative integer, got {steps!r}.")
        sampler = self._sampler_for(init)
        labels = None if y is None else _labels_for(y, n, self.num_classes).to(self.device)
        with preserved_rng(seed) if seed is not None else contextlib.nullcontext(), autocast(self.device, self._opened.performance):
            x = sampler.sample(self._opened.model, n, y=labels, steps=steps, device=self.device, persist=False)
        return x.float()


def load_run(run_dir: str | os.PathLike, checkpoint: str | int | os.PathLike = "last", device: Any = None) -> Run:
    """Open the run in ``run_dir`` at ``checkpoint`` (``last``, ``best``, a step or a path).

    ``device`` is ``auto`` (CUDA when available), ``cpu``, ``cuda[:N]`` or a ``torch.device``;
    default: the recipe's. No data set is built when the run recorded its inputs and classes
    (every run trained or imported by this version does): a model opens on a machine without the
    data. The model is in evaluation mode with frozen weights.
    """
    from jemkit.build import resolve_device
    from jemkit.plugin_manager import load_plugins
    from jemkit.run_open import open_run

    plugins = load_plugins()
    if device is not None and not isinstance(device, torch.device):
        device = resolve_device(str(device))
    if isinstance(checkpoint, os.PathLike):
        checkpoint = Path(checkpoint)
    opened = open_run(plugins, Path(run_dir), checkpoint, device, with_data=False)
    return Run(opened, plugins)


# --------------------------------------------------------------------------- training


def train(
    recipe: Recipe | None = None,
    overrides: Sequence[str] = (),
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
) -> Run:
    """Train ``recipe`` (a YAML path, a dict or a ``DictConfig``) with ``key=value`` ``overrides``
    into the run directory ``out`` (default ``runs/<name>-<timestamp>``); the trained :class:`Run`
    at its last checkpoint.

    This is ``jemkit run`` (the same function): the same run directory, checkpoints, logs and
    errors. With ``resume=True`` a run directory ``out`` that holds a checkpoint is continued from
    it (as ``jemkit run --resume OUT key=value ...``: the stored recipe, with ``overrides``;
    ``recipe`` may then be ``None``); an absent or empty ``out`` starts afresh. ``quiet`` silences
    the console output (warnings still go to stderr). A ``KeyboardInterrupt`` stops the run after a
    checkpoint (:class:`~jemkit.errors.Interrupted`); ``train(..., out=DIR, resume=True)`` continues it.
    """
    from rich.console import Console

    from jemkit.checkpoint import checkpoint_dir, latest_checkpoint
    from jemkit.cli import builtin_parser
    from jemkit.cli import run as run_cli

    overrides = _overrides(overrides)
    out_dir = None if out is None else Path(out)
    console, errors = Console(quiet=quiet), Console(stderr=True)
    parser, _ = builtin_parser()
    if resume and out_dir is None:
        raise RecipeError("train(..., resume=True) needs out=RUN_DIR, the run directory to continue.")
    if resume and out_dir.is_dir() and latest_checkpoint(checkpoint_dir(out_dir)) is not None:
        args = parser.parse_args(["run", "--resume", str(out_dir), *overrides])
        return _run(run_cli, args, console, errors, out_dir)
    if recipe is None:
        raise RecipeError(
            "train() needs a recipe (a YAML path, a dict or a DictConfig)"
            + (f"; {str(out_dir)!r} holds no checkpoint to resume." if resume else ".")
        )
    cfg = load_recipe(recipe, overrides)
    out_dir = out_dir or run_cli.default_run_dir(str(cfg.name))
    if isinstance(recipe, (str, os.PathLike)):
        args = parser.parse_args(["run", str(recipe), *overrides, "--out", str(out_dir)])
        return _run(run_cli, args, console, errors, out_dir)
    with tempfile.TemporaryDirectory(prefix="jemkit-recipe-") as folder:
        path = Path(folder) / f"{cfg.name}.yaml"
        path.write_text(recipes.to_yaml(cfg), encoding="utf-8")
        args = parser.parse_args(["run", str(path), "--out", str(out_dir)])
        return _run(run_cli, args, console, errors, out_dir)


def _run(run_cli: Any, args: Any, console: Any, errors: Any, out_dir: Path) -> Run:
    code = run_cli.run_command(args, console, errors)
    if code:
        raise JemkitError(f"Training into {str(out_dir)!r} ended with exit code {code}; see the messages above.")
    return load_run(out_dir)


__all__ = [
    "BATCH_SIZE",
    "SAMPLE_INITS",
    "Run",
    "RunModel",
    "list_components",
    "load_recipe",
    "load_run",
    "train",
]
