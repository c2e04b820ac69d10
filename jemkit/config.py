"""Recipes: OmegaConf YAML files that choose components by name.

A recipe is a mapping with these top-level sections (see ``recipes/*.yaml``)::

    name, seed, device            scalars
    data: {name: ..., ...}         a component section: ``name`` picks the registered component,
    model: {backbone: {...}, head: {...}}     the other keys are its parameters
    sampler: {steps, model_mode, init: {...}, transition: {...}}
    loss, optimizer, schedule      component sections
    train: {...}                   loop settings, validated against :class:`TrainParams`
    loggers: [tensorboard, ...]    logger plugins switched on (:func:`enabled_loggers`)

Component parameters are validated against the dataclass the component registered; an unknown
key or a wrong type is a :class:`~jemkit.errors.RecipeError` naming the recipe path.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    GrammarParseError,
    InterpolationKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    UnsupportedInterpolationType,
)

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
    "loggers": False,
    "ema": False,  # the built-in ema plugin's settings (plugins/training/ema.py), validated by it
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
        for key, value in _items(node):
            if isinstance(value, DictConfig):
                walk(value, f"{prefix}{key}.")
            elif key == "name" and prefix:
                path = prefix[:-1]
                old = OmegaConf.select(cfg, f"{path}.name", default=None)
                if old is not None and old != value:
                    found.append(path)

    walk(changes, "")
    return found


def _items(node: DictConfig) -> Any:
    """``node``'s items without resolving interpolations (checked separately, with clear errors)."""
    return node.items_ex(resolve=False)


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
    except InterpolationResolutionError as exc:
        raise interpolation_error(exc, source) from None
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as exc:
        raise RecipeError(
            f"Could not apply overrides {list(overrides)} to {source}: {_one_line(exc)}. Check the "
            f"dotted key names against the recipe (`{shlex.join(['jemkit', 'run', source, '--print-config'])}`)."
        ) from None
    assert isinstance(merged, DictConfig)
    return merged


#: Sections that must be mappings (``{name: ..., ...}``); the optional ones may also be null.
MAPPING_SECTIONS = ("data", "model", "sampler", "loss", "optimizer", "schedule", "train", "guard", "performance")
#: Largest accepted ``seed`` (numpy takes 32-bit seeds; jemkit derives others from it by offsets).
MAX_SEED = 2**32 - 1


def check_structure(cfg: DictConfig, source: str = "recipe") -> None:
    """Check top-level keys, that sections are mappings, the scalars (``name``, ``seed``,
    ``device``) and that every interpolation resolves."""
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
    check_interpolations(cfg, source)
    for key in MAPPING_SECTIONS:
        if key not in cfg:
            continue
        value = cfg.get(key)
        if isinstance(value, DictConfig) or (value is None and not TOP_LEVEL_KEYS[key]):
            continue
        raise RecipeError(
            f"{source}: section {key!r} must be a mapping of settings such as {{name: ..., ...}}, got "
            f"{_show(cfg[key])}. A section cannot be replaced by a single value; set one of its keys instead "
            f"({key}.<key>=value; --print-config shows the keys the recipe has)."
        )
    _check_name(cfg.get("name"), source)
    _check_seed(cfg.get("seed"), source)
    device = cfg.get("device")
    if device is not None and not isinstance(device, str):
        raise RecipeError(f"{source}: device must be a name (auto, cpu, cuda or cuda:N), got {device!r}.")


_SEPARATORS = re.compile(r"[/\\\x00-\x1f\x7f]")


def _check_name(name: Any, source: str) -> None:
    """A run ``name`` is a plain name: it becomes a folder under ``runs/`` and nothing else."""
    if name is None:
        return
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise RecipeError(f"{source}: name must be a plain name such as jem_digits, got {_show(name)}.")
    text = str(name)
    if not text.strip() or ".." in text or _SEPARATORS.search(text) or len(text) > 128:
        raise RecipeError(
            f"{source}: name {text!r} is not a plain name. A run's name becomes the folder runs/<name>-<time>, "
            "so it may not contain path separators (/ or \\), '..' or control characters, nor be empty or longer "
            "than 128 characters. Use a name such as jem_digits_small; to put a run elsewhere pass --out DIR."
        )


def _check_seed(seed: Any, source: str) -> None:
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RecipeError(
            f"{source}: seed must be an integer from 0 to {MAX_SEED} (numpy's and the data order's seeds are "
            f"derived from it), got {seed!r}. Pick a smaller seed, e.g. seed=1."
        )


def check_interpolations(cfg: DictConfig, source: str = "recipe") -> None:
    """Resolve every ``${...}`` of ``cfg`` once; a :class:`RecipeError` naming the key if one fails."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as exc:
        raise interpolation_error(exc, source) from None
    except GrammarParseError as exc:
        raise interpolation_error(exc, source) from None
    except RecursionError:
        raise RecipeError(
            f"{source}: an interpolation refers to itself through other keys (a cycle of ${{...}}). "
            "Replace one of them by a plain value."
        ) from None


def interpolation_error(exc: OmegaConfBaseException, source: str) -> RecipeError:
    """The clear error for an interpolation that does not resolve (unknown resolver, missing or
    self-referencing key, unset environment variable, bad syntax)."""
    key = getattr(exc, "full_key", None) or "?"
    detail = _one_line(exc)
    if isinstance(exc, UnsupportedInterpolationType):
        why = (
            f"it uses a resolver jemkit does not know ({detail}). Recipes may refer to other keys "
            "(${section.key}) and to environment variables (${oc.env:NAME} or ${oc.env:NAME,default}); "
            "write the value itself instead"
        )
    elif isinstance(exc, InterpolationKeyError):
        why = f"it refers to a key that does not exist ({detail}); check the dotted path or write the value itself"
    elif "Recursive" in detail or "recursive" in detail:
        why = f"it refers to itself ({detail}); replace it by a plain value"
    elif "Environment variable" in detail:
        why = f"{detail}; set the variable, or give a default: ${{oc.env:NAME,default}}"
    elif isinstance(exc, GrammarParseError):
        why = f"its ${{...}} is malformed ({detail}); close the braces or quote the text"
    else:
        why = detail
    return RecipeError(f"{source}: the value of {key} cannot be resolved: {why}.")


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
    """The resolved recipe as YAML text, except that values read from the environment stay as
    their interpolation (``${oc.env:NAME}``): a run directory or checkpoint never holds them."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    if not _mentions_env(raw):
        return OmegaConf.to_yaml(cfg, resolve=True)
    try:
        shadow = OmegaConf.to_container(OmegaConf.create(_mask_env(raw)), resolve=True)
        kept = _keep_env(raw, shadow)
    except (OmegaConfBaseException, RecursionError):
        kept = _keep_interpolations(raw, OmegaConf.to_container(cfg, resolve=True))
    return OmegaConf.to_yaml(OmegaConf.create(kept))


def environment_variables(cfg: DictConfig) -> list[str]:
    """Names of the environment variables the recipe reads (``${oc.env:NAME}``), sorted."""
    names: set[str] = set()
    for text in _strings(OmegaConf.to_container(cfg, resolve=False)):
        names.update(_ENV_NAME.findall(text))
    return sorted(names)


_ENV_START = "${oc.env:"
_ENV_NAME = re.compile(r"\$\{oc\.env:\s*([^,}\s]+)")
#: Stands in for an environment value while finding which resolved values depend on one.
_ENV_MARK = "@@jemkit-environment-value@@"


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def _mentions_env(node: Any) -> bool:
    return any(_ENV_START in text for text in _strings(node))


def _mask_env(node: Any) -> Any:
    """``node`` with every ``${oc.env:...}`` (nested braces included) replaced by :data:`_ENV_MARK`."""
    if isinstance(node, dict):
        return {k: _mask_env(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_env(v) for v in node]
    if not isinstance(node, str) or _ENV_START not in node:
        return node
    out, i = [], 0
    while True:
        start = node.find(_ENV_START, i)
        if start < 0:
            out.append(node[i:])
            return "".join(out)
        out.append(node[i:start])
        depth, j = 0, start
        while j < len(node):
            if node.startswith("${", j):
                depth, j = depth + 1, j + 2
                continue
            if node[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        out.append(_ENV_MARK)
        i = j + 1


def _contains_mark(node: Any) -> bool:
    return any(_ENV_MARK in text for text in _strings(node))


def _keep_env(raw: Any, shadow: Any) -> Any:
    """The resolved value where it does not depend on the environment, the raw interpolation where it does."""
    if isinstance(raw, dict) and isinstance(shadow, dict):
        return {k: _keep_env(raw[k], shadow[k]) for k in raw}
    if isinstance(raw, list) and isinstance(shadow, list) and len(raw) == len(shadow):
        return [_keep_env(r, v) for r, v in zip(raw, shadow)]
    return raw if _contains_mark(shadow) else shadow


def _keep_interpolations(raw: Any, resolved: Any) -> Any:
    """Fallback of :func:`to_yaml`: every string holding ``${`` stays raw, the rest is resolved."""
    if isinstance(raw, dict) and isinstance(resolved, dict):
        return {k: _keep_interpolations(raw[k], resolved[k]) for k in raw}
    if isinstance(raw, list) and isinstance(resolved, list) and len(raw) == len(resolved):
        return [_keep_interpolations(r, v) for r, v in zip(raw, resolved)]
    return raw if isinstance(raw, str) and "${" in raw else resolved


def from_yaml(text: str) -> DictConfig:
    """Parse recipe YAML text (as stored in checkpoints)."""
    cfg = OmegaConf.create(text)
    assert isinstance(cfg, DictConfig)
    return cfg


def enabled_loggers(cfg: Any) -> list[str]:
    """The logger plugins a recipe switches on (``loggers: [tensorboard, ...]``); empty when absent."""
    value = cfg.get("loggers") if cfg is not None else None
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(name) for name in value]


def check_loggers(cfg: DictConfig, available: list[str], source: str = "recipe") -> None:
    """Check that ``loggers`` is a list naming installed logger plugins (``available``)."""
    value = cfg.get("loggers")
    if value is None:
        return
    if not isinstance(value, (ListConfig, list)) or not all(isinstance(name, str) for name in value):
        raise RecipeError(
            f"{source}: loggers must be a list of logger plugin names, e.g. loggers: [tensorboard], got {_show(value)}."
        )
    for name in value:
        if name not in available:
            import difflib

            close = difflib.get_close_matches(name, available, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecipeError(
                f"{source}: loggers names {name!r}, which is not an installed logger plugin.{hint} Installed loggers: "
                f"{', '.join(available) or 'none'} (`jemkit list-plugins` shows every plugin)."
            )


# --------------------------------------------------------------------------- resuming


@dataclass(frozen=True)
class Change:
    """One recipe key that a resumed run's overrides change (``old``/``new`` are :data:`UNSET` when absent)."""

    key: str
    old: Any
    new: Any

    def as_record(self) -> dict[str, Any]:
        return {"key": self.key, "old": None if self.old is UNSET else self.old, "new": None if self.new is UNSET else self.new}


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


#: The value of a key a recipe does not have.
UNSET: Any = _Unset()

#: Recipe keys (and whole sections, by prefix) that a resumed run cannot change, with the reason.
FIXED_ON_RESUME: dict[str, str] = {
    "seed": "the data order, the augmentation of every example and the RNG streams of the run so far all come from it",
    "data": "the model, the replay buffer and the data order of the run so far were made for this data set",
    "model": "the checkpoint does not fit this recipe once the model changes: its weights have the run's shapes",
    "sampler.init": "the chain initialiser's state in the checkpoint (the replay buffer) was made with these settings",
    "schedule": "the LR schedule continues from the state saved in the checkpoint",
    "optimizer.name": "the optimiser state in the checkpoint (moments, step counts) belongs to the run's optimiser",
    "train.batch_size": "the data order and the steps per epoch of the run so far depend on it",
    "train.best_metric": "checkpoints/best.safetensors and the best value so far were chosen by the run's metric",
    "train.best_mode": "checkpoints/best.safetensors and the best value so far were chosen by the run's metric",
}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def recipe_changes(stored: DictConfig, merged: DictConfig) -> list[Change]:
    """Every leaf key whose value differs between a run's stored recipe and the one with overrides."""
    old = _flatten(OmegaConf.to_container(stored, resolve=False))
    new = _flatten(OmegaConf.to_container(merged, resolve=False))
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, UNSET), new.get(key, UNSET)
        if before != after and not (before == {} and after is UNSET) and not (after == {} and before is UNSET):
            changes.append(Change(key, before, after))
    return changes


def fixed_reason(key: str) -> str | None:
    """Why ``key`` cannot change on resume (:data:`FIXED_ON_RESUME`), or ``None`` when it can."""
    for prefix, reason in FIXED_ON_RESUME.items():
        if key == prefix or key.startswith(prefix + "."):
            return reason
    return None


def check_resume_changes(changes: list[Change], new_run: str) -> None:
    """Refuse the changes a resumed run cannot apply: one :class:`RecipeError` naming every such key
    and why; ``new_run`` is the command that starts a new run with them instead."""
    refused = [(c, fixed_reason(c.key)) for c in changes]
    refused = [(c, why) for c, why in refused if why is not None]
    if not refused:
        return
    parts = "; ".join(f"{c.key} ({c.old!r} -> {c.new!r}): {why}" for c, why in refused)
    raise RecipeError(
        f"--resume cannot change {', '.join(c.key for c, _ in refused)}: {parts}. A resumed run applies an "
        f"override for real or not at all, so nothing was changed. To train with these values, start a new run "
        f"from this run's recipe: `{new_run}`."
    )


__all__ = [
    "Change",
    "DEFAULT_SAMPLER",
    "FIXED_ON_RESUME",
    "UNSET",
    "check_interpolations",
    "check_resume_changes",
    "environment_variables",
    "recipe_changes",
    "SamplerParams",
    "TOP_LEVEL_KEYS",
    "TrainParams",
    "apply_overrides",
    "build_params",
    "check_loggers",
    "check_structure",
    "component_params",
    "enabled_loggers",
    "from_yaml",
    "load_recipe",
    "read_run_config",
    "section",
    "to_yaml",
]
