"""Importer ``jem_ref`` (``jemkit import jem-ref CKPT --out RUN_DIR``): the reference JEM code's checkpoints.

The reference code is github.com/wgrathwohl/JEM. Its checkpoints are ``torch.save`` dicts with

* ``model_state_dict``: the state dict of a ``CCF`` model. Keys: ``f.conv1.{weight,bias}`` (the
  stem conv, 16 channels), ``f.layer{1,2,3}.{i}.{bn1,conv1,bn2,conv2}.*`` for the ``n`` blocks of
  each group and ``f.layer{1,2,3}.0.shortcut.0.*`` where a block changes the shape, ``f.bn1.*``
  (the final norm), ``f.linear.*`` (unused), ``energy_output.*`` (unused by ``CCF``) and
  ``class_output.{weight,bias}`` (the logits). Every conv has a bias. The ``bn*`` keys exist only
  with a norm (none: no keys; batch norm: ``weight``, ``bias``, ``running_mean``, ``running_var``,
  ``num_batches_tracked``).
* ``replay_buffer``: a float tensor ``[N, 3, 32, 32]`` of past SGLD chain states in ``[-1, 1]``
  (SGLD may push a few values slightly outside).

A block is pre-activation: norm, LeakyReLU 0.2, conv3x3, dropout, norm, LeakyReLU, conv3x3 with the
block's stride (1, 2, 2 for the first block of each group), plus a 1x1 shortcut conv with that
stride. Then the final norm, LeakyReLU, an 8x8 average pool of the 8x8 maps and ``class_output``.
Group widths are 16k, 32k and 64k for widen factor k and depth 6n + 4, both read from the keys
and shapes. This is jemkit's ``wrn`` backbone plus the ``linear`` head key for key
(``f.conv1`` is ``backbone.first_layer``, ``bn1``/``bn2`` are ``norm1``/``norm2``, ``shortcut.0``
is ``shortcut``, ``f.bn1`` is ``backbone.final_norm``, ``class_output`` is ``head.fc``).

Not stored in the file and taken from the reference defaults: LeakyReLU slope 0.2 and dropout 0
(dropout is inactive in evaluation anyway). The run's recipe is :data:`JEM_CIFAR10_RECIPE`
(``recipes/jem_cifar10.yaml``) with this backbone, the buffer's size, and CIFAR-100 as data set for
100 classes. The file is read with ``torch.load(weights_only=True)`` only: a file that needs code to
unpickle is refused.
"""

from __future__ import annotations

import copy
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import BuildContext
from jemkit.errors import CheckpointError
from jemkit.importing import ImportedRun, Importer

if TYPE_CHECKING:
    from jemkit.registry import Registry

#: Top-level entries of a reference checkpoint that the import reads.
MODEL_KEY = "model_state_dict"
BUFFER_KEY = "replay_buffer"
#: Prefixes of reference keys the logits do not use (dropped on import, listed in imported.json).
UNUSED_PREFIXES: tuple[str, ...] = ("f.linear.", "energy_output.")
#: Side of the images the reference model takes (its 8x8 average pool assumes 32x32 inputs).
IMAGE_SIZE = 32
#: Channels of the reference stem convolution.
STEM_WIDTH = 16
#: Data set of the run by number of classes (SVHN models also have 10: `--set data.name=svhn`).
DATA_BY_CLASSES: dict[int, str] = {10: "cifar10", 100: "cifar100"}
#: Where the reference code lives, for error messages.
REFERENCE = "the reference JEM code (github.com/wgrathwohl/JEM)"

#: ``recipes/jem_cifar10.yaml`` (the paper setting) as the import's recipe; the import sets the
#: backbone, the buffer size and the data set. tests/test_import_jem_ref.py keeps the two in step.
JEM_CIFAR10_RECIPE: dict[str, Any] = {
    "seed": 1,
    "device": "auto",
    "data": {
        "name": "cifar10",
        "root": "data",
        "download": True,
        "augment": True,
        "noise_std": 0.03,
        "val_size": 5000,
    },
    "model": {
        "backbone": {"name": "wrn", "depth": 28, "widen_factor": 10, "norm": "none", "dropout": 0.0, "leak": 0.2},
        "head": {"name": "linear"},
    },
    "sampler": {
        "steps": 20,
        "model_mode": "eval",
        "init": {"name": "replay_buffer", "size": 10000, "reinit_freq": 0.05},
        "transition": {"name": "sgld", "step_size": 1.0, "noise": 0.01},
    },
    "loss": {"name": "jem", "pyx": 1.0, "px": 1.0, "pxy": 0.0},
    "optimizer": {"name": "adam", "lr": 1.0e-4, "weight_decay": 0.0},
    "schedule": {"name": "warmup_multistep", "warmup_steps": 1000, "milestones": [160, 180], "gamma": 0.3},
    "train": {
        "epochs": 200,
        "batch_size": 64,
        "num_workers": 4,
        "log_every": 100,
        "eval_every_epochs": 1,
        "checkpoint_every_epochs": 1,
        "sample_every_epochs": 10,
        "samples_per_class": 10,
    },
    "guard": {"max_abs_loss": 1.0e8, "max_rollbacks": 3, "lr_scale": 0.5},
    "performance": {"autocast": "auto", "channels_last": "auto"},
}

_BLOCK_KEY = re.compile(r"^f\.layer([123])\.(\d+)\.(bn1|conv1|bn2|conv2|shortcut\.0)\.(.+)$")
_RENAMED = {"bn1": "norm1", "bn2": "norm2", "conv1": "conv1", "conv2": "conv2", "shortcut.0": "shortcut"}
_RENAMED_PREFIXES = (
    ("f.conv1.", "backbone.first_layer."),
    ("f.bn1.", "backbone.final_norm."),
    ("class_output.", "head.fc."),
)
_NEEDS_CODE = re.compile(r"GLOBAL ([\w.]+)")
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", re.DOTALL)


@dataclass(frozen=True)
class ReferenceArchitecture:
    """The Wide-ResNet of a reference checkpoint, as read from its keys and shapes."""

    depth: int
    widen_factor: int
    #: ``none`` or ``batch``.
    norm: str
    in_channels: int
    num_classes: int

    @property
    def blocks(self) -> int:
        """Blocks per group, ``(depth - 4) / 6``."""
        return (self.depth - 4) // 6

    @property
    def widths(self) -> tuple[int, int, int, int]:
        """Channels of the stem and of the three groups."""
        k = self.widen_factor
        return (STEM_WIDTH, 16 * k, 32 * k, 64 * k)


def reference_shapes(arch: ReferenceArchitecture) -> dict[str, tuple[int, ...]]:
    """Every key of the reference ``CCF`` state dict that the logits use, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, out_channels: int, in_channels: int, size: int) -> None:
        shapes[f"{prefix}.weight"] = (out_channels, in_channels, size, size)
        shapes[f"{prefix}.bias"] = (out_channels,)

    def norm(prefix: str, channels: int) -> None:
        if arch.norm == "batch":
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.{name}"] = (channels,)
            shapes[f"{prefix}.num_batches_tracked"] = ()

    widths = arch.widths
    conv("f.conv1", widths[0], arch.in_channels, 3)
    in_planes = widths[0]
    for group, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
        for i in range(arch.blocks):
            prefix = f"f.layer{group}.{i}"
            norm(f"{prefix}.bn1", in_planes)
            conv(f"{prefix}.conv1", planes, in_planes, 3)
            norm(f"{prefix}.bn2", planes)
            conv(f"{prefix}.conv2", planes, planes, 3)
            if (stride if i == 0 else 1) != 1 or in_planes != planes:
                conv(f"{prefix}.shortcut.0", planes, in_planes, 1)
            in_planes = planes
    norm("f.bn1", widths[3])
    shapes["class_output.weight"] = (arch.num_classes, widths[3])
    shapes["class_output.bias"] = (arch.num_classes,)
    return shapes


def jemkit_key(reference_key: str) -> str:
    """The key of jemkit's ``JointEnergyModel`` (``wrn`` backbone, ``linear`` head) for a used
    reference key, e.g. ``f.layer2.0.shortcut.0.weight`` -> ``backbone.layer2.0.shortcut.weight``."""
    match = _BLOCK_KEY.match(reference_key)
    if match:
        group, index, part, rest = match.groups()
        return f"backbone.layer{group}.{index}.{_RENAMED[part]}.{rest}"
    for old, new in _RENAMED_PREFIXES:
        if reference_key.startswith(old):
            return new + reference_key[len(old) :]
    raise ValueError(f"{reference_key!r} is not a key of the reference model that the logits use")


# --------------------------------------------------------------------------- reading


def _refuse(path: Path, problem: str, fix: str = "") -> CheckpointError:
    fix = fix or (
        f"This importer reads checkpoints written by {REFERENCE}: a torch.save dict with "
        f"'{MODEL_KEY}' (a CCF Wide-ResNet) and '{BUFFER_KEY}' ([N, 3, 32, 32])."
    )
    return CheckpointError(f"Cannot import {str(path)!r}: {problem}. {fix}")


def load_reference(path: Path) -> dict[str, Any]:
    """The dict saved in ``path``, read with ``torch.load(weights_only=True)`` on the CPU (no code
    from the file ever runs); a :class:`CheckpointError` for a file that needs code or is unreadable."""
    if path.stat().st_size == 0:
        raise _refuse(path, "the file is empty")
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol; the error below says what matters
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needs = _NEEDS_CODE.search(str(exc))
        if needs:
            raise _refuse(
                path,
                f"it needs code to unpickle (it refers to {needs.group(1)}, not only to tensors and plain "
                "containers), and jemkit loads foreign checkpoints with torch.load(weights_only=True) only, "
                "never running code from a file",
                "If you trust the file, re-save its tensors where that code is importable: "
                f"torch.save({{'{MODEL_KEY}': ckpt['{MODEL_KEY}'], "
                f"'{BUFFER_KEY}': ckpt['{BUFFER_KEY}']}}, 'plain.pt'), "
                "then import plain.pt.",
            ) from None
        detail = _UNPICKLER_DETAIL.search(str(exc))
        reason = " ".join(detail.group(1).split()) if detail else _first_line(exc)
        raise _refuse(path, f"it is not a file torch.save wrote (the safe unpickler says: {reason})") from None
    except Exception as exc:  # a foreign file may break torch.load in many ways; none is a jemkit bug
        raise _refuse(path, f"torch.load cannot read it ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(loaded, dict):
        raise _refuse(path, f"it holds a {type(loaded).__name__}, not a dict")
    return loaded


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else "no details"
    return text if len(text) <= 200 else text[:197] + "..."


def _shown(keys: list[str], limit: int = 5) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _model_state(path: Path, loaded: Mapping[str, Any]) -> tuple[dict[str, Tensor], str | None]:
    """The model state dict (tensors only) and the ``module.`` prefix it had, if any."""
    missing = [key for key in (MODEL_KEY, BUFFER_KEY) if key not in loaded]
    if missing:
        names = " or ".join(repr(k) for k in missing)
        raise _refuse(path, f"its dict has no {names} entry (it has {_shown(sorted(map(str, loaded)))})")
    state = loaded[MODEL_KEY]
    named_tensors = isinstance(state, Mapping) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    )
    if not named_tensors:
        raise _refuse(path, f"'{MODEL_KEY}' is not a state dict of named tensors")
    state = dict(state)
    prefix = "module."  # a model wrapped in nn.DataParallel when saved
    if state and not any(k.startswith("f.") for k in state) and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}, prefix
    return state, None


def infer_architecture(path: Path, state: Mapping[str, Tensor]) -> ReferenceArchitecture:
    """Depth, widen factor, norm, input channels and classes of a reference state dict."""
    required = ("f.conv1.weight", "f.layer1.0.conv1.weight", "class_output.weight")
    missing = [key for key in required if key not in state]
    if missing:
        raise _refuse(path, f"'{MODEL_KEY}' lacks the key(s) {', '.join(missing)}, so it is not a reference CCF model")
    stem, first, head = (state[key] for key in required)
    if stem.dim() != 4 or tuple(stem.shape[0:1]) + tuple(stem.shape[2:]) != (STEM_WIDTH, 3, 3):
        raise _refuse(path, f"f.conv1.weight has shape {tuple(stem.shape)}, not [16, C, 3, 3]")
    if first.dim() != 4 or first.shape[0] % 16 or first.shape[0] == 0:
        raise _refuse(
            path,
            f"f.layer1.0.conv1.weight has shape {tuple(first.shape)}; its output channels must be 16 * widen_factor",
        )
    if head.dim() != 2:
        raise _refuse(path, f"class_output.weight has shape {tuple(head.shape)}, not [classes, features]")
    blocks = 0
    while f"f.layer1.{blocks}.conv1.weight" in state:
        blocks += 1
    if "f.bn1.running_mean" in state:
        norm = "batch"
    else:
        norm_keys = sorted(k for k in state if k.startswith("f.bn1.") or re.search(r"\.bn[12]\.", k))
        if norm_keys:
            raise _refuse(
                path,
                f"its norm layers ({_shown(norm_keys, 3)}) are neither absent (norm none) nor batch norm with running "
                "statistics, the two variants this importer reads",
                "Import a checkpoint of a model without norm layers or with batch norm, or write an importer plugin "
                "for this variant.",
            )
        norm = "none"
    return ReferenceArchitecture(
        depth=6 * blocks + 4,
        widen_factor=int(first.shape[0]) // 16,
        norm=norm,
        in_channels=int(stem.shape[1]),
        num_classes=int(head.shape[0]),
    )


def convert_model(
    path: Path, state: Mapping[str, Tensor], arch: ReferenceArchitecture
) -> tuple[dict[str, Tensor], list[str]]:
    """jemkit's ``JointEnergyModel`` state dict from the reference one, after checking every key
    and shape against :func:`reference_shapes`; also the unused keys that were dropped."""
    expected = reference_shapes(arch)
    unused = sorted(k for k in state if k.startswith(UNUSED_PREFIXES))
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected and k not in unused)
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in sorted(expected)
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    described = f"a WRN-{arch.depth}-{arch.widen_factor} with norm {arch.norm} and {arch.num_classes} classes"
    if missing:
        raise _refuse(path, f"'{MODEL_KEY}' looks like {described} but lacks {_shown(missing)}")
    if unexpected:
        raise _refuse(path, f"'{MODEL_KEY}' looks like {described} but also has {_shown(unexpected)}")
    if wrong:
        raise _refuse(path, f"'{MODEL_KEY}' looks like {described} but has unexpected shapes: {_shown(wrong, 3)}")
    if not all(state[k].is_floating_point() for k in expected if not k.endswith("num_batches_tracked")):
        raise _refuse(path, f"'{MODEL_KEY}' has weights that are not floating point")
    return {jemkit_key(k): state[k].detach().clone() for k in expected}, unused


def convert_buffer(path: Path, buffer: Any, arch: ReferenceArchitecture) -> Tensor:
    """The replay buffer as float32 ``[N, C, 32, 32]``, after checking its type, shape and values."""
    if not isinstance(buffer, Tensor) or not buffer.is_floating_point():
        what = f"a {buffer.dtype} tensor" if isinstance(buffer, Tensor) else f"a {type(buffer).__name__}"
        raise _refuse(path, f"'{BUFFER_KEY}' is {what}, not a float tensor")
    want = (arch.in_channels, IMAGE_SIZE, IMAGE_SIZE)
    if buffer.dim() != 4 or tuple(buffer.shape[1:]) != want or buffer.shape[0] < 1:
        shape = ", ".join(map(str, want))
        raise _refuse(path, f"'{BUFFER_KEY}' has shape {list(buffer.shape)}, not [N, {shape}] with N >= 1")
    buffer = buffer.detach().to(torch.float32).contiguous().clone()
    if not torch.isfinite(buffer).all():
        raise _refuse(path, f"'{BUFFER_KEY}' holds NaN or infinite values")
    return buffer


def recipe_for(arch: ReferenceArchitecture, buffer_size: int) -> dict[str, Any]:
    """:data:`JEM_CIFAR10_RECIPE` with the checkpoint's backbone, buffer size and data set."""
    recipe = copy.deepcopy(JEM_CIFAR10_RECIPE)
    recipe["description"] = (
        f"Imported reference JEM checkpoint: WRN-{arch.depth}-{arch.widen_factor}, norm {arch.norm}, "
        f"{arch.num_classes} classes, {buffer_size}-sample replay buffer"
    )
    recipe["data"]["name"] = DATA_BY_CLASSES[arch.num_classes]
    recipe["model"]["backbone"].update(depth=arch.depth, widen_factor=arch.widen_factor, norm=arch.norm)
    recipe["sampler"]["init"]["size"] = buffer_size
    return {"description": recipe.pop("description"), **recipe}


class JemRefImporter(Importer):
    """Reads checkpoints of the reference JEM code (see the module docstring for the format)."""

    def read(self, path: Path) -> ImportedRun:
        loaded = load_reference(path)
        state, prefix = _model_state(path, loaded)
        arch = infer_architecture(path, state)
        if arch.in_channels != 3:
            raise _refuse(path, f"its stem convolution takes {arch.in_channels} input channels, not 3 (RGB)")
        if arch.num_classes not in DATA_BY_CLASSES:
            raise _refuse(
                path,
                f"class_output has {arch.num_classes} classes; the reference code trains on CIFAR-10 and SVHN (10 "
                "classes) or CIFAR-100 (100), and the imported run needs one of those data sets",
            )
        model, unused = convert_model(path, state, arch)
        buffer = convert_buffer(path, loaded[BUFFER_KEY], arch)
        inferred = {
            "architecture": {
                "backbone": "wrn",
                "depth": arch.depth,
                "widen_factor": arch.widen_factor,
                "norm": arch.norm,
                "in_channels": arch.in_channels,
                "num_classes": arch.num_classes,
            },
            "assumed": {
                "leak": "0.2, the reference default (not stored in the file)",
                "dropout": "0.0, the reference default (not stored in the file; inactive in evaluation)",
                "data": f"{DATA_BY_CLASSES[arch.num_classes]}, from the number of classes",
            },
            "replay_buffer": {
                "size": int(buffer.shape[0]),
                "dtype": str(loaded[BUFFER_KEY].dtype).replace("torch.", ""),
                "min": float(buffer.min()),
                "max": float(buffer.max()),
            },
            "ignored_keys": unused,
            "ignored_entries": sorted(str(k) for k in loaded if k not in (MODEL_KEY, BUFFER_KEY)),
            "key_prefix_removed": prefix,
        }
        return ImportedRun(
            recipe=recipe_for(arch, int(buffer.shape[0])),
            model=model,
            sampler={"buffer": buffer},
            input_shape=(arch.in_channels, IMAGE_SIZE, IMAGE_SIZE),
            num_classes=arch.num_classes,
            inferred=inferred,
        )


def build_jem_ref(params: None, context: BuildContext) -> JemRefImporter:
    """Checkpoints of the reference JEM code (github wgrathwohl/JEM): WRN weights and replay buffer."""
    return JemRefImporter()


@hookimpl
def jemkit_register_importers(registry: Registry) -> None:
    registry.register(
        "jem_ref",
        build_jem_ref,
        description="Reference JEM checkpoints (github wgrathwohl/JEM, torch.save of a CCF WRN and its replay buffer)",
    )
