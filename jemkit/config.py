"""Recipes: OmegaConf YAML files that choose components by name.

A recipe is a mapping with these top-level sections (see ``recipes/*.yaml``)::

    name, seed, device            scalars
    data: {name: ..., ...}         a component section: ``name`` picks the registered component,
    model: {backbone: {...}, head: {...}}     the other keys are its parameters
    sampler: {steps, model_mode, init: {...}, transition: {...}}
    loss, optimizer, schedule      component sections
    train: {...}                   loop settings, validated against :class:`TrainParams`

Component parameters are validated against the dataclass the component registered; an unknown
key or a wrong type is a :class:`~jemkit.errors.RecipeError` naming the recipe path.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from jemkit import defaults
from jemkit.errors import RecipeError
from jemkit.registry import Registry


@dataclass
class TrainParams:
    """Settings of the training loop (``train:`` section)."""

    epochs: int = 1
    batch_size: int = 64
    #: Stop after this many optimiser steps even if epochs remain (``None``: run all epochs).
    max_steps: int | None = None
    #: Write ``metrics.jsonl`` every this many steps (the last step is always written).
    log_every: int = 10
    #: Evaluate test accuracy every this many epochs (the last epoch is always evaluated).
    eval_every_epochs: int = 1
    checkpoint_every_epochs: int = 1
    #: Checkpoint every this many steps as well (0: only at epoch ends).
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    #: Write a sample grid every this many epochs (0: only at the end).
    sample_every_epochs: int = 0
    #: Chains in a sample grid per class (class-conditional grid, one row per class).
    samples_per_class: int = 10
    #: Extra transition steps for the final sample grid, on top of the sampler's own steps.
    sample_extra_steps: int = 0
    #: DataLoader worker processes preparing training batches (augmentation off the main process).
    #: At most the usable CPU cores. The batches do not depend on it: each item is augmented under
    #: its own seed.
    num_workers: int = 0
    #: Evaluate on the validation split instead of the test split during training.
    eval_on_val: bool = False
    #: Evaluation metric (without split prefix) that picks ``checkpoints/best.safetensors``.
    best_metric: str = "acc"
    #: ``max`` or ``min``: whether a larger or smaller ``best_metric`` is better.
    best_mode: str = "max"
    #: Use deterministic algorithms (slower on GPU; exact resume on CPU).
    deterministic: bool = False
    #: Show the rich progress bar (off automatically when stdout is not a terminal).
    progress: bool = True

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "log_every", "eval_every_epochs", "checkpoint_every_epochs"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 or null, got {self.max_steps}")
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {self.best_mode!r}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 (load in the main process) or more, got {self.num_workers}")


@dataclass
class SamplerParams:
    """Kernel-level sampler settings (``sampler:`` section besides ``init`` and ``transition``)."""

    #: Transition steps per sampling call (K).
    steps: int = defaults.SAMPLER_STEPS
    #: Model mode while sampling: ``eval`` (JEM) or ``train`` (JEM++ with batch norm).
    model_mode: str = defaults.SAMPLER_MODEL_MODE
    #: Freeze the weights while sampling so no weight gradients are computed.
    freeze_weights: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be non-negative, got {self.steps}")
        if self.model_mode not in ("eval", "train"):
            raise ValueError(f"model_mode must be 'eval' or 'train', got {self.model_mode!r}")


#: Top-level keys a recipe may have, and whether they are required.
TOP_LEVEL_KEYS: dict[str, bool] = {
    "name": False,
    "description": False,
    "seed": False,
    "device": False,
    "data": True,
    "model": True,
    "sampler": False,
    "loss": True,
    "optimizer": True,
    "schedule": False,
    "train": False,
    "guard": False,
    "performance": False,
}

#: The ``sampler:`` section of a recipe without one (the names and steps of :mod:`jemkit.defaults`).
DEFAULT_SAMPLER: dict[str, Any] = defaults.sampler_section()


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Read a recipe file and merge ``key=value`` dot-list overrides into it."""
    path = Path(path)
    if not path.is_file():
        hint = "" if path.suffix in (".yaml", ".yml") else " Recipes are YAML files ending in .yaml."
        raise RecipeError(
            f"Recipe file {str(path)!r} does not exist.{hint} Pass the path of a recipe such as "
            "recipes/jem_digits.yaml (relative to the current directory)."
        )
    try:
        cfg = OmegaConf.load(path)
    except OSError:  # OmegaConf's word for "the YAML is a scalar, not a mapping"
        cfg = None
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError, ValueError) as exc:
        raise RecipeError(
            f"Recipe {str(path)!r} is not valid YAML: {_one_line(exc)}. Fix the syntax at the "
            "position given (indentation, a missing colon, an unclosed bracket)."
        ) from None
    if not isinstance(cfg, DictConfig):
        raise RecipeError(
            f"Recipe {str(path)!r} must be a mapping of sections (data:, model:, loss:, ...), "
            f"but its top level is {'a scalar' if cfg is None else 'a ' + type(cfg).__name__}."
        )
    cfg = apply_overrides(cfg, overrides, source=str(path))
    if "name" not in cfg or cfg.get("name") in (None, ""):
        cfg.name = path.stem
    check_structure(cfg, source=str(path))
    return cfg


def switched_components(cfg: DictConfig, changes: DictConfig) -> list[str]:
    """Dotted paths of the component sections of ``cfg`` whose ``name`` ``changes`` replaces.

    The old component's parameters mean nothing to the new one, so such a section starts afresh.
    """
    found: list[str] = []

    def walk(node: DictConfig, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, DictConfig):
                walk(value, f"{prefix}{key}.")
            elif key == "name" and prefix:
                path = prefix[:-1]
                old = OmegaConf.select(cfg, f"{path}.name", default=None)
                if old is not None and old != value:
                    found.append(path)

    walk(changes, "")
    return found


def _log_dropped_keys(cfg: DictConfig, changes: DictConfig, path: str, source: str) -> None:
    """Warn (logger ``jemkit.config``; the CLI prints it) which keys of section ``path`` switching its ``name`` drops."""
    old, given = OmegaConf.select(cfg, path), OmegaConf.select(changes, path)
    dropped = [str(k) for k in old.keys() if k != "name" and k not in given]
    if dropped:
        logging.getLogger(__name__).warning(
            f"{source}: {path}.name={given.name} replaces the {old.name!r} section {path}, so its keys "
            f"{', '.join(dropped)} are dropped; set again any the new component takes, e.g. {path}.{dropped[0]}=..."
        )


def apply_overrides(cfg: DictConfig, overrides: list[str] | tuple[str, ...], source: str = "recipe") -> DictConfig:
    """Merge ``a.b=value`` overrides (YAML values) into ``cfg``.

    An override that changes a component's ``name`` (``sampler.transition.name=mala``) replaces
    that section: only the keys the overrides give for it are kept, as when picking a config group
    in Hydra. Other overrides merge key by key.
    """
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise RecipeError(
                f"Override {item!r} is not of the form key=value. Write dotted keys such as "
                "train.epochs=5 or sampler.transition.step_size=0.5."
            )
    if not overrides:
        return cfg
    try:
        changes = OmegaConf.from_dotlist(list(overrides))
        base = cfg.copy()
        for path in switched_components(base, changes):
            _log_dropped_keys(base, changes, path, source)
            OmegaConf.update(base, path, {}, merge=False)
        merged = OmegaConf.merge(base, changes)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as exc:
        raise RecipeError(
            f"Could not apply overrides {list(overrides)} to {source}: {_one_line(exc)}. Check the "
            "dotted key names against the recipe (`jemkit run RECIPE --print-config`)."
        ) from None
    assert isinstance(merged, DictConfig)
    return merged


def check_structure(cfg: DictConfig, source: str = "recipe") -> None:
    """Check top-level keys and that component sections are mappings with a ``name``."""
    unknown = [k for k in cfg.keys() if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise RecipeError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}. A recipe's sections "
            f"are {', '.join(TOP_LEVEL_KEYS)}; move the setting under the section it belongs to."
        )
    missing = [k for k, required in TOP_LEVEL_KEYS.items() if required and k not in cfg]
    if missing:
        raise RecipeError(
            f"{source}: missing required section(s) {', '.join(map(repr, missing))}. Every recipe needs "
            "data, model (backbone and head), loss and optimizer; see recipes/jem_digits.yaml."
        )


def section(cfg: DictConfig, dotted: str, source: str = "recipe") -> DictConfig:
    """The mapping at ``dotted`` (e.g. ``model.backbone``), with a clear error if it is not one."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise RecipeError(
                f"{source}: missing section {dotted!r}. Add it, e.g. `{dotted}: {{name: ...}}`; "
                "see recipes/jem_digits.yaml for a complete recipe."
            )
        node = node[part]
    if not isinstance(node, DictConfig):
        raise RecipeError(
            f"{source}: {dotted!r} must be a mapping such as {{name: ..., ...}}, got {_show(node)}."
        )
    return node


def component_params(registry: Registry, node: DictConfig, dotted: str, source: str = "recipe") -> tuple[str, Any]:
    """Validate a component section and return ``(name, params dataclass instance or None)``."""
    if "name" not in node or not isinstance(node.get("name"), str):
        choices = ", ".join(registry.names()) or "none installed"
        raise RecipeError(
            f"{source}: section {dotted!r} needs a `name:` choosing the {registry.kind} "
            f"(one of: {choices})."
        )
    name = node.name
    component = registry.get(name, where=f"{source}, key {dotted}.name")
    raw = {k: v for k, v in node.items() if k != "name"}
    return name, build_params(component.params, raw, dotted, source, what=f"{registry.kind} {name!r}")


def build_params(params_cls: type | None, raw: Any, dotted: str, source: str = "recipe", what: str = "") -> Any:
    """Validate ``raw`` (mapping) against the dataclass ``params_cls`` and instantiate it."""
    if isinstance(raw, DictConfig):
        raw = OmegaConf.to_container(raw, resolve=True)
    if params_cls is None:
        if raw:
            raise RecipeError(
                f"{source}: {what or dotted} takes no parameters, but {dotted!r} sets "
                f"{', '.join(map(repr, raw))}. Remove them."
            )
        return None
    fields = {f.name for f in dataclasses.fields(params_cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        import difflib

        close = difflib.get_close_matches(str(key), sorted(fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(
            f"{source}: unknown key {dotted}.{key} for {what or dotted}.{hint} Its parameters are: "
            f"{', '.join(sorted(fields)) or 'none'}."
        )
    try:
        schema = OmegaConf.structured(params_cls)
        merged = OmegaConf.merge(schema, raw)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or ""
        path = f"{dotted}.{key}" if key else dotted
        raise RecipeError(
            f"{source}: invalid value at {path} for {what or dotted}: {_one_line(exc)}. "
            f"Expected types: {_field_types(params_cls)}."
        ) from None
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{source}: invalid parameters in {dotted} for {what or dotted}: {exc}.") from None


def _field_types(params_cls: type) -> str:
    parts = []
    for f in dataclasses.fields(params_cls):
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        parts.append(f"{f.name}: {t}")
    return ", ".join(parts)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    keep = [line.strip() for line in text if line.strip() and not line.strip().startswith(("full_key", "object_type", "reference_type"))]
    return " ".join(keep)[:400] or type(exc).__name__


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value)


def read_run_config(run_dir: Path) -> DictConfig:
    """The resolved recipe ``RUN_DIR/config.yaml`` of an earlier run; a clear error if there is none."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RecipeError(
            f"{str(run_dir)!r} is a file, not a run directory. Pass the directory of an earlier `jemkit run` "
            "(it holds config.yaml and checkpoints/); to use one checkpoint file, pass it with --checkpoint."
        )
    if not run_dir.is_dir():
        raise RecipeError(
            f"Run directory {str(run_dir)!r} does not exist. Pass the directory of an earlier "
            "`jemkit run` (it holds config.yaml and checkpoints/)."
        )
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise RecipeError(
            f"{str(config)!r} is missing, so {str(run_dir)!r} is not a jemkit run directory "
            "(a run directory holds config.yaml and checkpoints/)."
        )
    try:
        cfg = from_yaml(config.read_text(encoding="utf-8"))
    except Exception as exc:  # any parse failure of a damaged file
        raise RecipeError(f"{str(config)!r} is not a readable recipe ({exc}).") from None
    check_structure(cfg, source=str(config))
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    """The resolved recipe as YAML text."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def from_yaml(text: str) -> DictConfig:
    """Parse recipe YAML text (as stored in checkpoints)."""
    cfg = OmegaConf.create(text)
    assert isinstance(cfg, DictConfig)
    return cfg


__all__ = [
    "DEFAULT_SAMPLER",
    "SamplerParams",
    "TOP_LEVEL_KEYS",
    "TrainParams",
    "apply_overrides",
    "build_params",
    "check_structure",
    "component_params",
    "from_yaml",
    "load_recipe",
    "read_run_config",
    "section",
    "to_yaml",
]
