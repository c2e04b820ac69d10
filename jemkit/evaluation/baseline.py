"""A ``--baseline`` run is only comparable when it was tested on the very same inputs.

``jemkit eval`` scores the baseline on the evaluated run's test split, so the two recipes' ``data:``
sections must agree on every setting that defines that split: the data set, the split seed, the
test fraction, the validation hold-out, the input noise and any preprocessing. A baseline trained
with another split seed has seen some of these test images in training and would score
impossibly well. Settings that only affect training or where files live (:data:`NOT_TEST_SET`)
may differ. Each section is completed with its data component's defaults before comparing, so a
key left at its default in one recipe and written out in the other is no difference.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from jemkit.config import build_params
from jemkit.errors import EvalError, JemkitError
from jemkit.plugin_manager import PluginSet

#: ``data:`` keys that do not change the test inputs (where the files are, training augmentation).
NOT_TEST_SET: frozenset[str] = frozenset({"root", "download", "augment", "px_unaugmented", "n_train"})


def split_settings(plugins: PluginSet, cfg: DictConfig, source: str) -> dict[str, Any]:
    """The ``data:`` settings of a run's recipe that define its test set, defaults filled in."""
    node = cfg.get("data") or {}
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    assert isinstance(raw, dict)
    name = str(raw.pop("name", "?"))
    values: dict[str, Any] = dict(raw)
    try:
        component = plugins.registries["data"].get(name)
        params = build_params(component.params, raw, "data", source, f"data set {name!r}")
        if dataclasses.is_dataclass(params):
            values = dataclasses.asdict(params)
    except JemkitError:  # an unknown data set or a bad key: compare the recipes as written
        pass
    return {"name": name, **{k: v for k, v in values.items() if k not in NOT_TEST_SET}}


def check_same_test_set(
    plugins: PluginSet, run_cfg: DictConfig, run_dir: Path, base_cfg: DictConfig, base_dir: Path
) -> None:
    """Raise :class:`EvalError` listing every test-set setting in which the baseline differs."""
    ours = split_settings(plugins, run_cfg, str(run_dir / "config.yaml"))
    theirs = split_settings(plugins, base_cfg, str(base_dir / "config.yaml"))
    if ours["name"] != theirs["name"]:
        raise EvalError(
            f"The baseline run {str(base_dir)!r} was trained on {theirs['name']!r}, the evaluated run on "
            f"{ours['name']!r}; a baseline must share the data set (its inputs and classes)."
        )
    missing = object()
    differing = [
        f"data.{key}: {_show(theirs.get(key, missing), missing)} in the baseline, "
        f"{_show(ours.get(key, missing), missing)} in the evaluated run"
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key, missing) != theirs.get(key, missing)
    ]
    if differing:
        raise EvalError(
            f"The baseline run {str(base_dir)!r} was not trained with the test split of the evaluated run "
            f"{str(run_dir)!r}: {'; '.join(differing)}. A baseline is scored on the evaluated run's test inputs, "
            "so every data setting that defines them (data set, split seed, test fraction, validation size, "
            "input noise, preprocessing) must match, or it may be scored on images it trained on. Train the "
            "baseline with the same data: section, or evaluate each run on its own."
        )


def _show(value: Any, missing: object) -> str:
    return "(not set)" if value is missing else repr(value)
