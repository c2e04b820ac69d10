"""Checkpoints of other JEM code bases as jemkit run directories (``jemkit import FORMAT CKPT``).

An *importer* is a plugin component of kind ``importer`` (hook ``jemkit_register_importers``),
registered like every other kind: ``registry.register(name, factory, params=...)`` with
``factory(params, context) -> Importer``. Its :meth:`Importer.read` turns one foreign file into an
:class:`ImportedRun`: a complete jemkit recipe, the ``JointEnergyModel`` state dict of that
recipe's model and the state of its sampler. The kernel (:func:`import_checkpoint`) does the rest,
the same for every format: it builds the recipe's model and sampler, loads the imported state into
them (so a run that cannot be opened is never written), and writes ``RUN_DIR`` atomically::

    config.yaml                          the recipe
    checkpoints/step_000000.safetensors  model, sampler and progress (step 0), jemkit's format
    imported.json                        source file, its sha256, what the importer inferred
    data_info.json                       input shape and classes (:mod:`jemkit.data_info`; also
                                         the checkpoint's ``jemkit.data`` entry)

``jemkit eval``, ``jemkit sample`` and :func:`jemkit.run_open.open_run` open the result like any
run, ``jemkit sample`` and :func:`jemkit.load_run` without the data set on disk. Its checkpoint holds
no optimiser, schedule or RNG state, so ``jemkit run --resume`` refuses it.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from jemkit import __version__
from jemkit.build import build_model, build_sampler
from jemkit.checkpoint import checkpoint_dir, checkpoint_name, save_checkpoint
from jemkit.config import apply_overrides, build_params, check_structure, to_yaml
from jemkit.contracts import BuildContext
from jemkit.data_info import INFO_FILE, DataInfo, metadata_entry
from jemkit.errors import CheckpointError, JemkitError
from jemkit.plugin_manager import PluginSet
from jemkit.registry import Component
from jemkit.rng import preserved_rng, recipe_seed

#: Registry kind of importers.
KIND = "importer"
#: File of an imported run directory that says where it came from.
RECORD_NAME = "imported.json"
#: Step of the single checkpoint an import writes.
IMPORTED_STEP = 0
#: Bytes read at a time while hashing a source file.
_HASH_CHUNK = 1 << 20


@dataclass
class ImportedRun:
    """What an importer read from a foreign checkpoint, already in jemkit's terms."""

    #: A complete jemkit recipe as plain containers (``data``, ``model``, ``sampler``, ``loss``, ...).
    recipe: dict[str, Any]
    #: State dict of the recipe's ``JointEnergyModel`` (keys ``backbone.*`` and ``head.*``).
    model: dict[str, Tensor]
    #: ``Sampler.state_dict()`` of the recipe's sampler (a replay buffer: ``{"buffer": [N, C, H, W]}``).
    sampler: dict[str, Tensor]
    #: Shape of one input without the batch dimension, e.g. ``(3, 32, 32)``.
    input_shape: tuple[int, ...]
    #: Number of classes of the model's logits.
    num_classes: int
    #: What was read from the file or assumed (architecture, ignored keys, buffer range), JSON-able;
    #: recorded in ``imported.json``.
    inferred: dict[str, Any] = field(default_factory=dict)
    #: Name of each class, index by index, when the format or the data set tells them.
    class_names: list[str] | None = None


class Importer(abc.ABC):
    """Reads checkpoints of one foreign format (the ``importer`` contract).

    ``read`` must never run code from the file (no ``pickle``; ``torch.load`` only with
    ``weights_only=True``) and raises :class:`~jemkit.errors.CheckpointError` (one paragraph naming
    the problem and the fix) for every problem with the file: not readable, code needed to
    unpickle, missing keys, unexpected shapes.
    """

    @abc.abstractmethod
    def read(self, path: Path) -> ImportedRun:
        """The run stored in the existing file ``path``."""


@dataclass
class ImportResult:
    """Where :func:`import_checkpoint` wrote the run and what it recorded."""

    run_dir: Path
    checkpoint: Path
    #: The contents of ``RUN_DIR/imported.json``.
    record: dict[str, Any]


# --------------------------------------------------------------------------- looking up


def registry_name(format_name: str) -> str:
    """The registered name of a format given on the command line (``jem-ref`` is ``jem_ref``)."""
    return format_name.strip().replace("-", "_")


def find_importer(plugins: PluginSet, format_name: str) -> Component:
    """The importer registered as ``format_name`` (hyphens read as underscores); a
    :class:`~jemkit.errors.RegistryError` with a did-you-mean when there is none."""
    return plugins.registries[KIND].get(registry_name(format_name), where=f"jemkit import {format_name}")


def build_importer(component: Component, context: BuildContext | None = None) -> Importer:
    """``component``'s importer, built with its default parameters."""
    params = build_params(component.params, {}, KIND, f"importer {component.name!r}")
    importer = component.factory(params, context or BuildContext())
    if not isinstance(importer, Importer):
        raise JemkitError(
            f"The importer {component.name!r} of plugin {component.plugin!r} returned "
            f"{type(importer).__name__}, not a jemkit.importing.Importer. Fix or uninstall that plugin."
        )
    return importer


# --------------------------------------------------------------------------- writing


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_source(path: Path) -> None:
    """A :class:`CheckpointError` unless ``path`` is an existing file."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(
            f"Checkpoint {str(path)!r} {what}. Pass the path of the checkpoint file to import, e.g. "
            "`jemkit import jem-ref CIFAR10_MODEL.pt --out runs/jem_ref`."
        )


def check_output(out: Path) -> None:
    """A :class:`JemkitError` unless ``out`` is absent or an empty directory (an import never
    overwrites anything)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is a file" if not out.is_dir() else "is a directory that is not empty"
        raise JemkitError(
            f"--out {str(out)!r} {what}. An import writes a new run directory and never overwrites "
            "one: pass a path that does not exist yet (or an empty directory)."
        )


def _detail(exc: BaseException, limit: int = 400) -> str:
    """``exc``'s message on one line (``load_state_dict`` puts the detail on later lines), shortened."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_into_run(plugins: PluginSet, imported: ImportedRun, cfg: Any, source: str) -> dict[str, Any]:
    """Build ``cfg``'s model and sampler on the CPU, load the imported state into them (proving that
    the run opens) and return the checkpoint state in jemkit's layout. No data set is built."""
    context = BuildContext(
        device=torch.device("cpu"),
        input_shape=tuple(imported.input_shape),
        num_classes=int(imported.num_classes),
        seed=recipe_seed(cfg, source),
    )
    with preserved_rng(context.seed):  # building a replay buffer draws noise
        model = build_model(plugins, cfg, context, source)
        sampler = build_sampler(plugins, cfg, context, source)
    try:
        model.load_state_dict(imported.model, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"The imported weights do not fit the model of {source}: {_detail(exc)}. Either a "
            "--set override changed the model (drop it), or the importer does not handle this variant "
            "of the format (report it with the file's keys and shapes)."
        ) from None
    try:
        sampler.load_state_dict(imported.sampler)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"The imported sampler state does not fit the sampler of {source}: {_detail(exc)}. "
            "Drop any --set override of sampler.init (the buffer size comes from the file)."
        ) from None
    return {
        "model": model.state_dict(),
        "sampler": sampler.state_dict(),
        "progress": {"step": IMPORTED_STEP},
    }


def _write_directory(out: Path, files: Mapping[str, str], checkpoint: tuple[dict[str, Any], dict[str, str]]) -> Path:
    """Write ``files`` (relative name -> text) and the checkpoint into a hidden sibling folder,
    then rename it to ``out``: a failed import leaves nothing behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.import-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        state, metadata = checkpoint
        save_checkpoint(checkpoint_dir(staging) / checkpoint_name(IMPORTED_STEP), state, metadata)
        if out.is_dir():
            out.rmdir()  # empty (checked before); a rename can replace only a missing path everywhere
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return checkpoint_dir(out) / checkpoint_name(IMPORTED_STEP)


def imported_data_info(imported: ImportedRun, cfg: Any) -> DataInfo:
    """The :class:`~jemkit.data_info.DataInfo` of an imported run: shape and classes from the file,
    data set name and input noise from the recipe ``cfg`` (after ``--set`` overrides)."""
    data = cfg.get("data") or {}
    noise = data.get("noise_std")
    return DataInfo(
        name=None if data.get("name") is None else str(data.get("name")),
        input_shape=tuple(int(s) for s in imported.input_shape),
        num_classes=int(imported.num_classes),
        class_names=None if imported.class_names is None else tuple(imported.class_names),
        noise_std=None if noise is None else float(noise),
    )


def import_checkpoint(
    plugins: PluginSet,
    format_name: str,
    path: Path | str,
    out: Path | str,
    *,
    name: str | None = None,
    overrides: Sequence[str] = (),
) -> ImportResult:
    """Turn the ``format_name`` checkpoint at ``path`` into a new run directory ``out``.

    ``name`` sets the recipe's ``name`` (default: the file name without suffix); ``overrides`` are
    ``key=value`` recipe overrides applied to the imported recipe (``data.root=/data/cifar``). The
    model and sampler are built and loaded before anything is written, and the directory appears
    complete or not at all. Every problem is a :class:`~jemkit.errors.JemkitError`.
    """
    path, out = Path(path), Path(out)
    check_source(path)
    check_output(out)
    component = find_importer(plugins, format_name)
    imported = build_importer(component).read(path)

    source = f"the recipe imported from {path.name}"
    recipe = {k: v for k, v in imported.recipe.items() if k != "name"}
    cfg = OmegaConf.create({"name": name or imported.recipe.get("name") or path.stem, **recipe})
    cfg = apply_overrides(cfg, list(overrides), source=source)
    check_structure(cfg, source=source)

    record = {
        "format": component.name,
        "importer": {"plugin": component.plugin, "origin": plugins.origins.get(component.plugin, "?")},
        "source": {"path": str(path.resolve()), "sha256": file_sha256(path), "bytes": path.stat().st_size},
        "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jemkit_version": __version__,
        "checkpoint": f"{checkpoint_dir(Path()).name}/{checkpoint_name(IMPORTED_STEP)}",
        "input_shape": list(imported.input_shape),
        "num_classes": int(imported.num_classes),
        "overrides": list(overrides),
        "inferred": imported.inferred,
    }
    data_info = imported_data_info(imported, cfg)
    metadata = {
        "jemkit.recipe": to_yaml(cfg),
        "jemkit.versions": json.dumps({"jemkit": __version__, "torch": torch.__version__}),
        "jemkit.plugins": json.dumps(plugins.origins),
        "jemkit.imported": json.dumps(record),
        **metadata_entry(data_info),
    }
    state = _load_into_run(plugins, imported, cfg, source)
    files = {
        "config.yaml": to_yaml(cfg),
        RECORD_NAME: json.dumps(record, indent=2) + "\n",
        INFO_FILE: json.dumps(data_info.to_json(), indent=2) + "\n",
    }
    checkpoint = _write_directory(out, files, (state, metadata))
    return ImportResult(run_dir=out, checkpoint=checkpoint, record=record)


__all__ = [
    "IMPORTED_STEP",
    "KIND",
    "RECORD_NAME",
    "ImportResult",
    "ImportedRun",
    "Importer",
    "build_importer",
    "check_output",
    "check_source",
    "file_sha256",
    "find_importer",
    "import_checkpoint",
    "imported_data_info",
    "registry_name",
]
