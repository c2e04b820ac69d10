"""Training state in one safetensors file, written atomically and loaded without unpickling.

A checkpoint is a nested structure (model and optimiser state dicts, scheduler state, sampler
buffer, RNG states, counters) flattened into two parts: every tensor and numpy array goes into
the safetensors tensor table under a unique dotted key, and everything else becomes a JSON
*skeleton* stored in the header metadata under ``jemkit.tree``. User metadata (the resolved
recipe, versions, plugin list) sits beside it as plain strings.

Skeleton nodes are JSON scalars (``null``, booleans, integers, finite floats, strings) or
one-key objects tagged with ``$``: ``{"$dict": [[key, node], ...]}`` (keys are strings or
integers, kept as such), ``{"$list": [...]}``, ``{"$tuple": [...]}``, ``{"$float": "nan"}``
(also ``"inf"`` and ``"-inf"``), ``{"$tensor": key}`` and
``{"$ndarray": key, "dtype": "<f4", "shape": [...], "scalar": false}`` (an array is stored as
its raw bytes, so every numeric numpy dtype and byte order round-trips).

Every checkpoint records a digest of its payload (``jemkit.digest``: one SHA-256 per tensor and
one over the skeleton and user metadata, see :mod:`jemkit.digest`); :func:`load_checkpoint`
verifies it and names each damaged entry. Format ``1.1`` (written now) requires the digest, so a
damaged header cannot pass as an old checkpoint; format ``1`` checkpoints, written before digests
existed, load unverified (:attr:`Checkpoint.verified` is ``False``).

The last section is the one place that names a run directory's checkpoints and finds them
(:func:`checkpoint_name`, :func:`list_checkpoints`, :func:`resolve_checkpoint`), removes the
temporary files of killed writes (:func:`remove_temporaries`) and sets files aside without
deleting them (:func:`set_aside`). The RNG states a checkpoint carries are captured and restored
by :mod:`jemkit.rng`.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_save

from jemkit import digest
from jemkit.disk import disk_full_error, is_no_room
from jemkit.errors import CheckpointError, CheckpointIntegrityError

#: Header metadata key holding the JSON skeleton of the saved structure.
TREE_KEY = "jemkit.tree"
#: Header metadata key holding the checkpoint format version.
FORMAT_KEY = "jemkit.format"
#: The format version this module writes: format 1 plus a payload digest, which it requires.
FORMAT_VERSION = "1.1"
#: Older format versions this module still reads (format 1: written before digests, loaded unverified).
LEGACY_FORMATS = frozenset({"1"})
#: Header metadata key holding the payload digests (:mod:`jemkit.digest`).
DIGEST_KEY = digest.DIGEST_KEY
#: Metadata keys jemkit writes itself; user metadata may not use them.
RESERVED_KEYS = frozenset({TREE_KEY, FORMAT_KEY, DIGEST_KEY})
#: Test-only: seconds that each checkpoint write is stretched over (written in slices with pauses),
#: so that fault-injection tests can kill a process inside a write. Unset in normal use.
SLOW_WRITE_ENV = "JEMKIT_TEST_SLOW_WRITE_SECONDS"
#: File suffix of checkpoints.
SUFFIX = ".safetensors"
#: Suffix of the temporary file a write goes through (``.NAME.PID.RANDOM.tmp``).
TMP_SUFFIX = ".tmp"

# safetensors refuses to read headers larger than this (its MAX_HEADER_SIZE).
_MAX_HEADER_BYTES = 100_000_000
_STEP_NAME = re.compile(r"^step_(\d+)\.safetensors$")
_TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_TAGS = ("$dict", "$list", "$tuple", "$float", "$tensor", "$ndarray")


# --------------------------------------------------------------------------- tree encoding


class _Encoder:
    """One encoding pass: collects tensors under unique keys and builds the skeleton."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[int] = set()
        self._active: set[int] = set()  # ids of containers on the current path (cycle check)

    def key_for(self, path: tuple[str, ...]) -> str:
        base = _UNSAFE_KEY_CHARS.sub("_", ".".join(path)) or "root"
        key, n = base, 1
        while key in self.tensors or key == "__metadata__":
            n += 1
            key = f"{base}#{n}"
        return key

    def encode(self, value: Any, path: tuple[str, ...]) -> Any:
        if value is None or type(value) in (bool, int, str):
            return value
        if type(value) is float:
            if math.isfinite(value):
                return value
            return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, torch.Tensor):
            return {"$tensor": self.add_tensor(value, path)}
        if type(value) is np.ndarray or isinstance(value, (np.memmap, np.generic)):
            return self.add_array(value, path)
        if isinstance(value, (dict, list, tuple)):
            if id(value) in self._active:
                raise ValueError(f"cannot checkpoint {_show(path)}: the structure contains itself")
            self._active.add(id(value))
            try:
                return self.encode_container(value, path)
            finally:
                self._active.discard(id(value))
        raise TypeError(
            f"cannot checkpoint {_show(path)}: {type(value).__qualname__} is not supported. "
            "A checkpoint holds dicts (str or int keys), lists, tuples, tensors, numpy arrays, "
            "None, bool, int, float and str; convert the object to its state dict first."
        )

    def encode_container(self, value: dict | list | tuple, path: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if type(key) not in (str, int):
                    raise TypeError(
                        f"cannot checkpoint {_show(path)}: dict key {key!r} is a "
                        f"{type(key).__qualname__}; only str and int keys are supported"
                    )
                items.append([key, self.encode(item, (*path, str(key)))])
            return {"$dict": items}
        nodes = [self.encode(item, (*path, str(i))) for i, item in enumerate(value)]
        return {"$tuple" if isinstance(value, tuple) else "$list": nodes}

    def add_tensor(self, value: torch.Tensor, path: tuple[str, ...]) -> str:
        if value.layout != torch.strided or value.device.type == "meta":
            raise TypeError(
                f"cannot checkpoint {_show(path)}: only dense tensors with data can be saved "
                f"(got layout {value.layout} on device {value.device})"
            )
        tensor = value.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        storage = tensor.untyped_storage()
        owns_storage = (
            tensor.storage_offset() == 0
            and storage.nbytes() == tensor.numel() * tensor.element_size()
        )
        # safetensors rejects tensors that share memory, and a view would drag along the
        # bytes of its whole base; such tensors get their own compact copy.
        if not owns_storage or (storage.nbytes() and storage.data_ptr() in self._storages):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        if tensor.untyped_storage().nbytes():
            self._storages.add(tensor.untyped_storage().data_ptr())
        key = self.key_for(path)
        self.tensors[key] = tensor
        return key

    def add_array(self, value: np.ndarray | np.generic, path: tuple[str, ...]) -> dict[str, Any]:
        array = np.asarray(value)
        if array.dtype.hasobject or array.dtype.fields is not None:
            raise TypeError(
                f"cannot checkpoint {_show(path)}: numpy dtype {array.dtype} (object or "
                "structured) is not supported; use a plain numeric, bool or string array"
            )
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        key = self.key_for(path)
        self.tensors[key] = torch.from_numpy(raw.copy())
        return {
            "$ndarray": key,
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "scalar": isinstance(value, np.generic),
        }


def _show(path: tuple[str, ...]) -> str:
    return "state[" + "][".join(repr(p) for p in path) + "]" if path else "the state"


def encode_tree(tree: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Split ``tree`` into CPU tensors keyed by dotted path and a JSON skeleton referencing them.

    Dicts (str or int keys), lists, tuples, tensors, numpy arrays and scalars, ``None``,
    ``bool``, ``int``, ``float`` (``inf`` and ``nan`` included) and ``str`` are supported; any
    other object raises :class:`TypeError` naming its path. Subclasses of dict, list and tuple
    (``OrderedDict``, ``torch.Size``) come back as the plain type. The returned tensors are
    contiguous and share no memory, ready for ``safetensors.torch.save``.
    """
    encoder = _Encoder()
    skeleton = encoder.encode(tree, ())
    return encoder.tensors, json.dumps(skeleton, allow_nan=False, separators=(",", ":"))


def decode_tree(tensors: Mapping[str, torch.Tensor], skeleton: str) -> Any:
    """Rebuild the structure that :func:`encode_tree` split into ``tensors`` and ``skeleton``.

    Raises :class:`ValueError` if the skeleton is malformed and :class:`KeyError` if it refers to
    a tensor missing from ``tensors``.
    """
    return _decode(json.loads(skeleton), tensors, None)


def _decode(node: Any, tensors: Mapping[str, torch.Tensor], device: torch.device | None) -> Any:
    if node is None or type(node) in (bool, int, float, str):
        return node
    tags = [key for key in node if key in _TAGS] if type(node) is dict else []
    if len(tags) != 1:
        raise ValueError(f"malformed skeleton node {_abbrev(node)}")
    tag, body = tags[0], node[tags[0]]
    if tag == "$dict":
        if type(body) is not list:
            raise ValueError(f"malformed dict node {_abbrev(node)}")
        result = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) not in (str, int):
                raise ValueError(f"malformed dict item {_abbrev(pair)}")
            result[pair[0]] = _decode(pair[1], tensors, device)
        return result
    if tag in ("$list", "$tuple"):
        if type(body) is not list:
            raise ValueError(f"malformed sequence node {_abbrev(node)}")
        items = [_decode(item, tensors, device) for item in body]
        return tuple(items) if tag == "$tuple" else items
    if tag == "$float":
        if body not in _NONFINITE:
            raise ValueError(f"malformed float node {_abbrev(node)}")
        return _NONFINITE[body]
    if type(body) is not str:
        raise ValueError(f"malformed reference {_abbrev(node)}")
    if body not in tensors:
        raise KeyError(body)
    if tag == "$tensor":
        tensor = tensors[body]
        # A copy, so that no loaded tensor keeps the file memory-mapped.
        return tensor if device is None else tensor.to(device, copy=True)
    return _decode_array(node, tensors[body])


def _decode_array(node: dict[str, Any], raw: torch.Tensor) -> np.ndarray | np.generic:
    try:
        dtype = np.dtype(node["dtype"])
        shape = tuple(int(n) for n in node["shape"])
        scalar = bool(node["scalar"])
        data = raw.detach().cpu().contiguous().numpy().tobytes()
        array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"malformed array node {_abbrev(node)}: {error}") from None
    return array[()] if scalar else array


def _abbrev(node: Any) -> str:
    text = json.dumps(node)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the saved ``state``, the user ``metadata`` and the file's ``path``."""

    state: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path = Path()
    #: Whether a recorded digest was checked (``False`` for a checkpoint written before digests).
    verified: bool = False


def save_checkpoint(
    path: Path | str, state: dict[str, Any], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``state`` (and string ``metadata``) to ``path`` atomically; return the path.

    The file is written to a temporary file in the same directory, flushed and fsynced, then
    renamed over ``path`` (and the directory fsynced), so a crash at any moment leaves either
    the previous file or the new one, never a mix. If encoding or writing fails, ``path`` is
    untouched and the temporary file is removed. Missing parent directories are created. A disk
    (or quota, or file-size limit) too full for the file raises
    :class:`~jemkit.errors.DiskFullError` naming the path and the bytes needed.
    """
    path = Path(path)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__qualname__}")
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"checkpoint metadata must map str to str, got {key!r}: {value!r}")
    clash = RESERVED_KEYS.intersection(metadata)
    if clash:
        raise ValueError(f"checkpoint metadata keys {sorted(clash)} are reserved for jemkit")

    tensors, skeleton = encode_tree(state)
    record = digest.compute(tensors, skeleton, metadata)
    header = {**metadata, TREE_KEY: skeleton, FORMAT_KEY: FORMAT_VERSION, DIGEST_KEY: record}
    data = _safetensors_save(tensors, metadata=header)
    (header_bytes,) = struct.unpack("<Q", data[:8])
    if header_bytes > _MAX_HEADER_BYTES:
        raise ValueError(
            f"checkpoint header for {path} would be {header_bytes} bytes, more than safetensors "
            "can read back; store large numeric data as tensors or numpy arrays, not lists"
        )
    _write_atomic(path, data)
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(temporary, flags, 0o666)
        with open(fd, "wb") as handle:
            _write_data(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if is_no_room(error):
            intact = f"The previous {path.name} is untouched." if path.exists() else "No partial file was left."
            raise disk_full_error(error, path, len(data), intact) from None
        raise
    _fsync_directory(directory)


def _write_data(handle: Any, data: bytes) -> None:
    """Write ``data``; under the test-only :data:`SLOW_WRITE_ENV` in slices with pauses between."""
    seconds = float(os.environ.get(SLOW_WRITE_ENV, "0") or 0)
    if seconds <= 0:
        handle.write(data)
        return
    slices = 8
    step = max(1, -(-len(data) // slices))
    view = memoryview(data)
    for start in range(0, len(data), step):
        handle.write(view[start : start + step])
        handle.flush()
        time.sleep(seconds / slices)


def _fsync_directory(directory: Path) -> None:
    """Persist a rename on POSIX; Windows cannot open directories, and does not need this."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_error(path: Path, error: BaseException) -> CheckpointError:
    if isinstance(error, FileNotFoundError) or not path.exists():
        return CheckpointError(
            f"Checkpoint file {path} does not exist. Check the path (checkpoints of a run are "
            "named like step_000123.safetensors in its checkpoint directory) or start without "
            "resuming."
        )
    return CheckpointError(
        f"Checkpoint file {path} is not a readable safetensors file ({error}). It is truncated, "
        "corrupt or not a checkpoint at all, e.g. from an interrupted copy; resume from another "
        "checkpoint of the run or restore this one from a backup."
    )


def _integrity_error(path: Path, damaged: list[str]) -> CheckpointIntegrityError:
    shown = ", ".join(repr(name) for name in damaged[:3])
    more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
    run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else None
    resume = f"; `{command('run', '--resume', run_dir)}` sets damaged checkpoints aside" if run_dir else ""
    return CheckpointIntegrityError(
        f"Checkpoint file {str(path)!r} is damaged: entry {shown}{more} no longer matches the digest recorded "
        "when the file was written, so its bytes changed afterwards (a failing disk, an interrupted copy or an "
        "edit), and it is not loaded. Restore it from a backup, or use another checkpoint of the run "
        f"(--checkpoint STEP or best{resume})."
    )


def _verify_header(path: Path, metadata: dict[str, str]) -> None:
    """Check the header part of a recorded digest (skeleton and user metadata) without the tensors."""
    record = metadata.get(DIGEST_KEY)
    if record is None:
        return
    user = {k: v for k, v in metadata.items() if k not in RESERVED_KEYS}
    try:
        expected = json.loads(record)["header"]
    except (ValueError, KeyError, TypeError):
        raise _integrity_error(path, [f"{digest.HEADER_ENTRY} (the digest record itself is unreadable)"]) from None
    if digest.header_digest(metadata.get(TREE_KEY, ""), user) != expected:
        raise _integrity_error(path, [digest.HEADER_ENTRY])


def _header_metadata(path: Path, metadata: dict[str, str] | None) -> dict[str, str]:
    """Check the jemkit entries of a header; return the user metadata."""
    metadata = dict(metadata or {})
    if TREE_KEY not in metadata or FORMAT_KEY not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file but not a jemkit checkpoint: its header has no "
            f"'{TREE_KEY}' or '{FORMAT_KEY}' entry. Pass a checkpoint written by jemkit "
            "(save_checkpoint or a training run); plain weight files are loaded with "
            "safetensors.torch.load_file instead."
        )
    version = metadata[FORMAT_KEY]
    if version != FORMAT_VERSION and version not in LEGACY_FORMATS:
        readable = ", ".join(repr(v) for v in sorted({FORMAT_VERSION, *LEGACY_FORMATS}))
        raise CheckpointError(
            f"{path} uses jemkit checkpoint format {version!r}, but this jemkit reads formats "
            f"{readable}. Load it with the jemkit version that wrote it (see the "
            "checkpoint's metadata), or upgrade jemkit."
        )
    if version == FORMAT_VERSION and DIGEST_KEY not in metadata:  # a format that always has one lost it
        raise _integrity_error(path, [f"{digest.HEADER_ENTRY} (its digest record is missing)"])
    _verify_header(path, metadata)
    return {k: v for k, v in metadata.items() if k not in RESERVED_KEYS}


_READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, struct.error, UnicodeError)


def read_metadata(path: Path | str) -> dict[str, str]:
    """The user metadata of the checkpoint at ``path``, reading only its header (whose digest is
    verified when the checkpoint records one)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
    except _READ_ERRORS as error:
        raise _open_error(path, error) from None
    return _header_metadata(path, metadata)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load the checkpoint at ``path``, putting its tensors on ``map_location``.

    Numpy arrays come back as numpy arrays. Every problem with the file (missing, truncated,
    corrupt, not a jemkit checkpoint, newer format) raises :class:`CheckpointError`; bytes that no
    longer match the recorded digest raise :class:`~jemkit.errors.CheckpointIntegrityError`
    naming the damaged entries. A checkpoint without a digest (written before digests) loads
    unverified.
    """
    path = Path(path)
    device = torch.device(map_location)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            user_metadata = _header_metadata(path, metadata)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except CheckpointError:
        raise
    except _READ_ERRORS as error:
        raise _open_error(path, error) from None
    record = metadata.get(DIGEST_KEY)
    if record is not None:
        damaged = digest.damaged_entries(record, tensors, metadata[TREE_KEY], user_metadata)
        if damaged:
            raise _integrity_error(path, damaged)
    try:
        state = _decode(json.loads(metadata[TREE_KEY]), tensors, device)
    except KeyError as error:
        raise CheckpointError(
            f"Checkpoint file {path} is corrupt: its '{TREE_KEY}' structure refers to tensor "
            f"{error.args[0]!r}, which the file does not contain. Resume from another "
            "checkpoint of the run or restore this one from a backup."
        ) from None
    except (ValueError, RecursionError) as error:
        raise CheckpointError(
            f"Checkpoint file {path} is corrupt: its '{TREE_KEY}' structure cannot be read "
            f"({error}). Resume from another checkpoint of the run or restore this one from a "
            "backup."
        ) from None
    if type(state) is not dict:
        raise CheckpointError(
            f"Checkpoint file {path} is corrupt: its saved state is a {type(state).__name__}, "
            "not a dict. Resume from another checkpoint of the run."
        )
    return Checkpoint(state=state, metadata=user_metadata, path=path, verified=record is not None)


# --------------------------------------------------------------------------- run directories
#
# The one place that knows how a run directory names its checkpoints:
# ``RUN_DIR/checkpoints/step_000123.safetensors`` after 123 optimiser steps (six digits, more
# when needed) and ``RUN_DIR/checkpoints/best.safetensors`` for the best evaluation so far.

#: Folder of a run directory that holds its checkpoints.
CHECKPOINT_DIR = "checkpoints"
#: File name of the checkpoint with the best ``train.best_metric`` so far.
BEST_NAME = f"best{SUFFIX}"


def checkpoint_dir(run_dir: Path | str) -> Path:
    """``RUN_DIR/checkpoints``."""
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint after ``step`` optimiser steps: ``step_000123.safetensors``."""
    if type(step) is not int or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return f"step_{step:06d}{SUFFIX}"


def checkpoint_step(path: Path | str) -> int | None:
    """The step encoded in a checkpoint file name, or ``None`` if it is not a step checkpoint."""
    match = _STEP_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: Path | str) -> list[Path]:
    """Step checkpoints in ``directory``, oldest step first; empty if the directory is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in directory.iterdir() if p.is_file()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def latest_checkpoint(directory: Path | str) -> Path | None:
    """The step checkpoint with the highest step in ``directory``, or ``None`` if there is none."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(
    directory: Path | str, keep_last: int, protect: Iterable[Path | str] = frozenset()
) -> list[Path]:
    """Delete all step checkpoints but the newest ``keep_last`` and the ``protect``-ed ones.

    Files that are not step checkpoints (a ``best.safetensors``, temporary files) are never
    touched. Returns the deleted paths.
    """
    if type(keep_last) is not int or keep_last < 0:
        raise ValueError(f"keep_last must be a non-negative int, got {keep_last!r}")
    protected = {Path(p).resolve() for p in protect}
    checkpoints = list_checkpoints(directory)
    candidates = checkpoints[: max(0, len(checkpoints) - keep_last)]
    deleted = []
    for path in candidates:
        if path.resolve() not in protected:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted


def resolve_checkpoint(run_dir: Path | str, which: str | int | Path = "last") -> Path:
    """The checkpoint file of ``run_dir`` that ``which`` names; a :class:`CheckpointError` if none.

    ``which`` is ``"last"`` (the step checkpoint with the highest step), ``"best"``
    (``best.safetensors``), a step number (an ``int`` or a string of digits: ``3`` is
    ``step_000003.safetensors``) or the path of a checkpoint file. A relative path is taken from
    the working directory, then from ``RUN_DIR/checkpoints`` (so a bare file name works). Only the
    file's existence is checked here; :func:`load_checkpoint` reads it.
    """
    if isinstance(which, bool) or not isinstance(which, (str, int, Path)):
        raise TypeError(f"which must be 'last', 'best', a step number or a path, got {which!r}")
    run_dir = Path(run_dir)
    folder = checkpoint_dir(run_dir)
    if isinstance(which, str) and which == "last":
        latest = latest_checkpoint(folder)
        if latest is None:
            raise CheckpointError(
                f"Run directory {str(run_dir)!r} has no checkpoint (looked for step_*{SUFFIX} in "
                f"{str(folder)!r}). Train it first (`{command('run', '--resume', run_dir)}` trains a run "
                "directory that holds its config.yaml, from its newest checkpoint or from step 0), or pass "
                "--checkpoint PATH with a checkpoint file."
            )
        return latest
    if isinstance(which, str) and which == "best":
        path = folder / BEST_NAME
        if not path.is_file():
            raise CheckpointError(
                f"Checkpoint {str(path)!r} does not exist: a run writes it when train.best_metric improves "
                f"at an evaluation. Use --checkpoint last, a step number ({_available(folder)}) or the path "
                "of a checkpoint file."
            )
        return path
    step = _as_step(which)
    if step is not None:
        path = folder / checkpoint_name(step)
        if not path.is_file():
            raise CheckpointError(
                f"Run directory {str(run_dir)!r} has no checkpoint of step {step} ({str(path)!r} does not "
                f"exist); {_available(folder)}. Pass an existing step, last, best, or a checkpoint path."
            )
        return path
    path = Path(which)
    if not path.is_file() and not path.is_absolute() and (folder / path).is_file():
        path = folder / path
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not exist. Pass last, best, a step number "
            f"({_available(folder)}) or the path of an existing .safetensors checkpoint file."
        )
    return path


def _as_step(which: str | int | Path) -> int | None:
    """``which`` as a step number when it is one (an int, or a string of ASCII digits)."""
    if isinstance(which, int):
        if which < 0:
            raise CheckpointError(f"Checkpoint step {which} is negative. Pass a step number >= 0, last or best.")
        return which
    if isinstance(which, str) and which.isascii() and which.isdigit():
        return int(which)
    return None


def _available(folder: Path) -> str:
    """The steps of the checkpoints in ``folder``, as a phrase for error messages."""
    steps = [checkpoint_step(p) for p in list_checkpoints(folder)]
    return "steps available: " + ", ".join(map(str, steps)) if steps else "the run has no step checkpoint"



def command(*words: Any) -> str:
    """A ``jemkit`` command line as a user types it (each word shell-quoted), for messages."""
    return shlex.join(["jemkit", *(str(w) for w in words)])


def remove_temporaries(directory: Path | str) -> list[Path]:
    """Delete the temporary files that killed writes left in ``directory``; returns them.

    Only names written by :func:`save_checkpoint` (``.NAME.PID.RANDOM.tmp``) are touched. Call it
    only while holding the run directory's lock (:class:`jemkit.run_lock.RunLock`): a live writer's
    temporary file looks the same.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def set_aside(path: Path | str, prefix: str) -> Path:
    """Rename ``path`` to ``PREFIX_NAME`` in its folder (``corrupt_step_000010.safetensors``) and
    return the new path; an existing file of that name is never replaced (``-2``, ``-3`` are added).
    A set-aside file no longer counts as a checkpoint of the run; nothing is deleted."""
    path = Path(path)
    suffix = SUFFIX if path.name.endswith(SUFFIX) else ""
    stem = path.name[: len(path.name) - len(suffix)]
    target, k = path.with_name(f"{prefix}_{stem}{suffix}"), 1
    while target.exists():
        k += 1
        target = path.with_name(f"{prefix}_{stem}-{k}{suffix}")
    os.replace(path, target)
    return target
