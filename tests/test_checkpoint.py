"""Checkpoints: exact round trips, atomic writes, clear errors for bad files, pruning, RNG."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from jemkit.checkpoint import (
    FORMAT_KEY,
    TREE_KEY,
    Checkpoint,
    checkpoint_name,
    checkpoint_step,
    decode_tree,
    encode_tree,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_metadata,
    save_checkpoint,
)
from jemkit.errors import CheckpointError
from jemkit.rng import rng_state, set_rng_state

REPO_ROOT = Path(__file__).resolve().parents[1]


def assert_same(actual: Any, expected: Any, where: str = "state") -> None:
    """Structural equality that also checks types, dtypes, int keys, NaN and -0.0."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected.detach().cpu()), where
    elif isinstance(expected, (np.ndarray, np.generic)):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert actual.tobytes() == expected.tobytes(), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert type(key) is type(next(k for k in actual if k == key))
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), where
    elif isinstance(expected, float):
        assert actual == expected and math.copysign(1, actual) == math.copysign(1, expected)
    else:
        assert actual == expected, where


def round_trip(tmp_path: Path, state: dict[str, Any], **kwargs: Any) -> Checkpoint:
    path = save_checkpoint(tmp_path / "ck.safetensors", state, **kwargs)
    return load_checkpoint(path)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)  # int64 0-dim num_batches_tracked
        self.fc = nn.Linear(4, 3)
        self.register_buffer("bf16", torch.randn(5, dtype=torch.bfloat16))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("scale", torch.tensor(0.5))
        self.register_buffer("counts", torch.arange(6, dtype=torch.int64).reshape(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.conv(x)).relu().mean(dim=(2, 3)))


# --------------------------------------------------------------------------- round trips


def test_model_state_dict_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    model(torch.randn(2, 3, 8, 8))  # updates running stats
    state = model.state_dict()
    loaded = round_trip(tmp_path, {"model": state}).state["model"]
    assert_same(dict(loaded), dict(state))
    assert loaded["bf16"].dtype == torch.bfloat16
    assert loaded["norm.num_batches_tracked"].dim() == 0
    fresh = Net()
    fresh.load_state_dict(loaded)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_adam_resumes_bit_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(5)]

    def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
        optimizer.step()

    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for batch in data[:3]:
        step(model, optimizer, batch)
    loaded = round_trip(
        tmp_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    ).state
    assert all(type(k) is int for k in loaded["optimizer"]["state"])

    resumed = Net()
    resumed.load_state_dict(loaded["model"])
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=1.0)
    resumed_optimizer.load_state_dict(loaded["optimizer"])
    assert resumed_optimizer.param_groups[0]["lr"] == 1e-2
    for batch in data[3:]:
        step(model, optimizer, batch)
        step(resumed, resumed_optimizer, batch)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_lambda_lr_state_round_trip(tmp_path: Path) -> None:
    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.9**e)

    optimizer, scheduler = make()
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    loaded = round_trip(tmp_path, {"scheduler": state}).state["scheduler"]
    assert_same(loaded, state)
    fresh_optimizer, fresh = make()
    fresh.load_state_dict(loaded)
    optimizer.step()
    scheduler.step()
    fresh_optimizer.step()
    fresh.step()
    assert fresh.get_last_lr() == scheduler.get_last_lr()


def test_nested_scalars_keep_their_types(tmp_path: Path) -> None:
    state = {
        "ints": {1: "one", 2: [1, -2, 2**70], "2": "string key"},
        "floats": [0.1, -0.0, 1e300, math.inf, -math.inf, math.nan],
        "none": None,
        "bools": (True, False),
        "tuple": (1, (2, 3), [4, (5,)], ()),
        "text": "ünïcode \"quoted\" \n {$dict}",
        "empty": {"dict": {}, "list": [], "tuple": ()},
        "tag_lookalike": {"$tensor": "x", "$dict": [1]},
    }
    assert_same(round_trip(tmp_path, state).state, state)
    subclasses = {"ordered": OrderedDict(b=1, a=2), "size": torch.Size([2, 3])}
    loaded = round_trip(tmp_path, subclasses).state
    assert_same(loaded, {"ordered": {"b": 1, "a": 2}, "size": (2, 3)})


def test_numpy_arrays_round_trip_with_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    state = {
        "f64": rng.normal(size=(3, 4)),
        "big_endian": np.arange(5, dtype=">i4"),
        "u64": np.array([0, 2**64 - 1], dtype=np.uint64),
        "complex": np.array([1 + 2j, -1j]),
        "bool": np.array([True, False]),
        "text": np.array(["a", "bcd"]),
        "zero_dim": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.int16),
        "transposed": np.arange(6).reshape(2, 3).T,
        "scalars": [np.float32(1.5), np.int64(-7), np.bool_(True)],
    }
    loaded = round_trip(tmp_path, state).state
    assert_same(loaded, {**state, "transposed": np.ascontiguousarray(state["transposed"])})
    assert loaded["f64"].flags.writeable
    assert type(loaded["scalars"][0]) is np.float32


def test_encode_tree_makes_safe_tensors() -> None:
    base = torch.arange(12.0)
    tree = {
        "base": base,
        "slice": base[2:5],
        "view": base.view(3, 4).t(),
        "again": base,
        "a.b": torch.ones(1),
        "a": {"b": torch.zeros(1)},
        "param": nn.Parameter(torch.ones(2)),
        "weird key/ü": torch.ones(1),
    }
    tensors, skeleton = encode_tree(tree)
    assert len(tensors) == len(set(tensors)) == 8
    pointers = [t.untyped_storage().data_ptr() for t in tensors.values()]
    assert len(set(pointers)) == len(pointers)
    assert all(t.is_contiguous() and not t.requires_grad for t in tensors.values())
    for tensor in tensors.values():  # compact: a view does not drag its base along
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    assert all(k.replace("_", "").replace(".", "").replace("#", "").isalnum() for k in tensors)
    assert "slice" in tensors and "a.b" in tensors
    decoded = decode_tree(tensors, skeleton)
    assert torch.equal(decoded["view"], base.view(3, 4).t())
    assert torch.equal(decoded["slice"], base[2:5])
    assert torch.equal(decoded["a"]["b"], torch.zeros(1))


def test_unsupported_objects_raise_type_error_naming_the_path() -> None:
    with pytest.raises(TypeError, match=r"'model'\]\['layers'\]\['1'\].*object"):
        encode_tree({"model": {"layers": [1, object()]}})
    with pytest.raises(TypeError, match="key"):
        encode_tree({"ok": {(1, 2): 3}})
    with pytest.raises(TypeError, match="dtype"):
        encode_tree({"x": np.array([object()])})
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="contains itself"):
        encode_tree(loop)


def test_metadata_round_trip_and_reserved_keys(tmp_path: Path) -> None:
    metadata = {"recipe": "model: {name: wrn}\n", "jemkit.version": "0.1.0"}
    checkpoint = round_trip(tmp_path, {"step": 3}, metadata=metadata)
    assert checkpoint.metadata == metadata
    assert checkpoint.path == tmp_path / "ck.safetensors"
    assert read_metadata(checkpoint.path) == metadata
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.safetensors", {}, {TREE_KEY: "{}"})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.safetensors", {}, {"n": 1})  # type: ignore[dict-item]


def test_save_creates_directories_and_maps_location(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "run" / "ckpt" / "a.safetensors", {"w": torch.ones(2)})
    state = load_checkpoint(path, map_location=torch.device("cpu")).state
    assert state["w"].device.type == "cpu"


# --------------------------------------------------------------------------- RNG


def draw() -> tuple[float, list[float], list[float], list[float]]:
    return (
        random.random(),
        np.random.rand(3).tolist(),
        np.random.randn(3).tolist(),  # exercises numpy's cached Gaussian
        torch.rand(3).tolist(),
    )


def test_rng_state_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    draw()
    np.random.randn(1)  # leave a cached Gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.safetensors", {"rng": rng_state()})
    expected = draw()
    draw()
    set_rng_state(load_checkpoint(tmp_path / "rng.safetensors").state["rng"])
    assert draw() == expected


def test_set_rng_state_accepts_json_lists() -> None:
    state = rng_state()
    legacy_numpy = np.random.get_state()  # the same state as numpy's tuple
    expected = draw()
    set_rng_state(
        {
            "python": json.loads(json.dumps(state["python"])),
            "numpy": (legacy_numpy[0], legacy_numpy[1].tolist(), *legacy_numpy[2:]),
            "torch": state["torch"].tolist(),
        }
    )
    assert draw() == expected


# --------------------------------------------------------------------------- atomic writes


def test_failed_encoding_leaves_old_file_intact(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck.safetensors", {"version": 1, "w": torch.ones(3)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(path, {"version": 2, "w": torch.zeros(3), "bad": [object()]})
    assert path.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [path]


def test_failed_write_removes_temporary_and_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(tmp_path / "ck.safetensors", {"version": 1})
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        save_checkpoint(path, {"version": 2, "w": torch.ones(1000)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [path]
    assert load_checkpoint(path).state == {"version": 1}


KILL_WRITER = textwrap.dedent(
    """
    import sys, torch
    from jemkit.checkpoint import save_checkpoint
    path, numel = sys.argv[1], int(sys.argv[2])
    version = 1
    while True:
        save_checkpoint(path, {"version": version, "w": torch.full((numel,), float(version))})
        print(version, flush=True)
        version += 1
    """
)


def test_sigkill_during_write_leaves_a_complete_checkpoint(tmp_path: Path) -> None:
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    numel = 4_000_000  # 16 MB per version
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"version": 0, "w": torch.zeros(numel)})
    python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_WRITER, str(path), str(numel)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        first = child.stdout.readline()  # one complete save, so the child is mid-loop
        assert first.strip() == "1", f"writer failed to start: {first!r}"
        deadline = time.monotonic() + 30
        # Kill while a temporary file exists: the write is in progress.
        while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)):
            assert time.monotonic() < deadline, "never caught the writer mid-write"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    state = load_checkpoint(path).state
    assert state["version"] >= 1
    assert state["w"].shape == (numel,)
    assert torch.all(state["w"] == float(state["version"]))


# --------------------------------------------------------------------------- bad files


def write_valid(path: Path) -> bytes:
    save_checkpoint(
        path,
        {"w": torch.arange(6.0).reshape(2, 3), "step": 3, "a": np.arange(3), "x": (math.nan,)},
        {"recipe": "r"},
    )
    return path.read_bytes()


def header_length(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


LOADERS = [pytest.param(load_checkpoint, id="load"), pytest.param(read_metadata, id="metadata")]


@pytest.mark.parametrize("loader", LOADERS)
def test_missing_file(tmp_path: Path, loader: Any) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="does not exist") as error:
        loader(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_truncated_files(tmp_path: Path, loader: Any) -> None:
    data = write_valid(tmp_path / "good.safetensors")
    path = tmp_path / "cut.safetensors"
    cuts = [0, 3, 8, 20, header_length(data) - 1, header_length(data), len(data) - 1]
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="not a readable safetensors") as error:
            loader(path)
        assert str(path) in str(error.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_flipped_header_bytes(tmp_path: Path, loader: Any) -> None:
    data = write_valid(tmp_path / "good.safetensors")
    path = tmp_path / "flipped.safetensors"
    for position in (0, 5, 8, 9):  # the length prefix and the opening brace
        corrupt = bytearray(data)
        corrupt[position] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        with pytest.raises(CheckpointError) as error:
            loader(path)
        assert str(path) in str(error.value)


def test_every_single_byte_header_corruption_is_a_checkpoint_error(tmp_path: Path) -> None:
    data = write_valid(tmp_path / "good.safetensors")
    path = tmp_path / "flipped.safetensors"
    failures = 0
    for position in range(header_length(data)):
        for mask in (0x01, 0xFF):
            corrupt = bytearray(data)
            corrupt[position] ^= mask
            path.write_bytes(bytes(corrupt))
            try:
                load_checkpoint(path)
            except CheckpointError as error:
                assert str(path) in str(error)
                failures += 1
    assert failures > header_length(data)  # most corruptions are caught, none crashes


@pytest.mark.parametrize("loader", LOADERS)
def test_random_bytes_are_not_a_checkpoint(tmp_path: Path, loader: Any) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a readable safetensors") as error:
        loader(path)
    assert str(path) in str(error.value)
    path.write_text("this is a text file, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        loader(path)


@pytest.mark.parametrize("loader", LOADERS)
def test_plain_safetensors_file_is_not_a_jemkit_checkpoint(tmp_path: Path, loader: Any) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a jemkit checkpoint") as error:
        loader(path)
    assert str(path) in str(error.value)
    save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a jemkit checkpoint"):
        loader(path)


@pytest.mark.parametrize("loader", LOADERS)
def test_newer_format_version(tmp_path: Path, loader: Any) -> None:
    path = tmp_path / "future.safetensors"
    save_file({}, str(path), metadata={TREE_KEY: '{"$dict":[]}', FORMAT_KEY: "2"})
    with pytest.raises(CheckpointError, match="format '2'") as error:
        loader(path)
    assert str(path) in str(error.value)


def test_skeleton_referencing_missing_tensor(tmp_path: Path) -> None:
    path = tmp_path / "hole.safetensors"
    skeleton = '{"$dict":[["w",{"$tensor":"w"}],["v",{"$tensor":"gone"}]]}'
    save_file({"w": torch.ones(2)}, str(path), metadata={TREE_KEY: skeleton, FORMAT_KEY: "1"})
    with pytest.raises(CheckpointError, match="'gone'") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "skeleton", ["{not json", '{"$set":[1]}', '{"$list":[1]}', '{"$dict":[[1.5,2]]}', "[1]"]
)
def test_malformed_skeleton(tmp_path: Path, skeleton: str) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({}, str(path), metadata={TREE_KEY: skeleton, FORMAT_KEY: "1"})
    with pytest.raises(CheckpointError, match="corrupt") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


# --------------------------------------------------------------------------- run directories


def test_checkpoint_names_sort_by_step(tmp_path: Path) -> None:
    assert checkpoint_name(123) == "step_000123.safetensors"
    assert checkpoint_step(tmp_path / checkpoint_name(1_234_567)) == 1_234_567
    assert checkpoint_step("best.safetensors") is None
    with pytest.raises(ValueError):
        checkpoint_name(-1)
    for step in (1_000_000, 7, 123, 0):
        save_checkpoint(tmp_path / checkpoint_name(step), {"step": step})
    (tmp_path / "best.safetensors").write_bytes(b"")
    (tmp_path / ".step_000009.safetensors.123.abcd.tmp").write_bytes(b"")
    (tmp_path / "step_000010.safetensors.txt").write_bytes(b"")
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [0, 7, 123, 1_000_000]
    assert list_checkpoints(tmp_path / "missing") == []


def test_prune_keeps_newest_and_protected(tmp_path: Path) -> None:
    paths = {s: save_checkpoint(tmp_path / checkpoint_name(s), {"s": s}) for s in range(1, 8)}
    best = tmp_path / "best.safetensors"
    best.write_bytes(b"x")
    deleted = prune_checkpoints(tmp_path, keep_last=3, protect={paths[2]})
    assert deleted == [paths[1], paths[3], paths[4]]
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [2, 5, 6, 7]
    assert best.exists()
    assert prune_checkpoints(tmp_path, keep_last=3, protect={paths[2]}) == []
    relative_protect = {Path(os.path.relpath(paths[5]))}
    prune_checkpoints(tmp_path, keep_last=0, protect=relative_protect)
    assert list_checkpoints(tmp_path) == [paths[5]]
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep_last=-1)


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_and_rng(tmp_path: Path) -> None:
    state = {"w": torch.randn(4, device="cuda"), "h": torch.ones(2, device="cuda").half()}
    path = save_checkpoint(tmp_path / "gpu.safetensors", {**state, "rng": rng_state()})
    expected = torch.rand(3, device="cuda")
    torch.rand(3, device="cuda")
    loaded = load_checkpoint(path, map_location="cuda").state
    assert loaded["w"].device.type == "cuda" and torch.equal(loaded["w"], state["w"])
    assert loaded["h"].dtype == torch.float16
    assert len(loaded["rng"]["cuda"]) == torch.cuda.device_count()
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    on_cpu = load_checkpoint(path).state
    assert on_cpu["w"].device.type == "cpu"


def test_prune_keeps_everything_when_fewer_than_keep_last(tmp_path):
    from jemkit.checkpoint import checkpoint_name, list_checkpoints, prune_checkpoints, save_checkpoint

    for step in (0, 3):
        save_checkpoint(tmp_path / checkpoint_name(step), {"step": step})
    assert prune_checkpoints(tmp_path, keep_last=3) == []
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(0), checkpoint_name(3)]
    assert len(prune_checkpoints(tmp_path, keep_last=0)) == 2
    assert list_checkpoints(tmp_path) == []


# --------------------------------------------------------------------------- integrity, disk full, leftovers


def test_every_checkpoint_records_a_digest_that_load_verifies(tmp_path: Path) -> None:
    from safetensors import safe_open

    from jemkit.checkpoint import DIGEST_KEY

    path = save_checkpoint(tmp_path / "ck.safetensors", {"w": torch.arange(6.0), "n": 3}, {"recipe": "r"})
    with safe_open(str(path), framework="pt") as handle:
        record = json.loads(handle.metadata()[DIGEST_KEY])
    assert record["algorithm"] == "sha256" and set(record["tensors"]) == {"w"}
    loaded = load_checkpoint(path)
    assert loaded.verified and loaded.metadata == {"recipe": "r"}  # the digest is not user metadata


def test_an_edited_header_value_is_named_even_when_the_file_stays_valid(tmp_path: Path) -> None:
    from jemkit.errors import CheckpointIntegrityError

    path = save_checkpoint(tmp_path / "ck.safetensors", {"step": 3, "w": torch.ones(2)}, {"recipe": "lr: 0.1"})
    data = path.read_bytes()
    edited = data.replace(b"lr: 0.1", b"lr: 0.9")  # same length: still a well-formed safetensors file
    assert edited != data
    path.write_bytes(edited)
    for loader in (load_checkpoint, read_metadata):
        with pytest.raises(CheckpointIntegrityError, match="header") as error:
            loader(path)
        assert str(path) in str(error.value)
    skeleton = data.replace(b'\\"step\\",3', b'\\"step\\",4')  # the saved step itself (JSON in JSON)
    assert skeleton != data
    path.write_bytes(skeleton)
    with pytest.raises(CheckpointIntegrityError):
        load_checkpoint(path)


def test_a_checkpoint_written_before_digests_loads_unverified() -> None:
    old = list_checkpoints(REPO_ROOT / "tests" / "fixtures" / "run_before_refactor" / "checkpoints")[-1]
    loaded = load_checkpoint(old)
    assert not loaded.verified and loaded.state["progress"]["step"] == 3


def test_disk_full_names_path_and_bytes_and_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from jemkit import checkpoint as module
    from jemkit.errors import DiskFullError

    path = save_checkpoint(tmp_path / "ck.safetensors", {"version": 1})
    before = path.read_bytes()

    def full(handle: Any, data: bytes) -> None:
        handle.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "_write_data", full)
    with pytest.raises(DiskFullError) as error:
        save_checkpoint(path, {"version": 2, "w": torch.ones(1000)})
    message = str(error.value)
    assert str(path) in message and "file system is full" in message and "previous ck.safetensors is untouched" in message
    needed = int(re.search(r"needed ([\d,]+) bytes", message).group(1).replace(",", ""))
    assert needed > 4000  # the 1000 float32 values and the header
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def test_temporaries_of_killed_writes_are_removed_and_set_aside_never_replaces(tmp_path: Path) -> None:
    from jemkit.checkpoint import remove_temporaries, set_aside

    kept = save_checkpoint(tmp_path / checkpoint_name(4), {"s": 4})
    stale = tmp_path / f".{checkpoint_name(6)}.4242.0badc0de.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.tmp"  # not a name jemkit writes
    other.write_text("mine")
    assert remove_temporaries(tmp_path) == [stale]
    assert not stale.exists() and other.exists() and kept.exists()
    first = set_aside(kept, "corrupt")
    assert first.name == "corrupt_step_000004.safetensors" and list_checkpoints(tmp_path) == []
    again = save_checkpoint(tmp_path / checkpoint_name(4), {"s": 44})
    second = set_aside(again, "corrupt")
    assert second.name == "corrupt_step_000004-2.safetensors"
    assert load_checkpoint(first).state == {"s": 4} and load_checkpoint(second).state == {"s": 44}


def test_every_single_bit_flip_of_a_checkpoint_is_detected(tmp_path: Path) -> None:
    """Header and payload alike: safetensors has no checksum, the digest catches each flip (a
    flipped digest key cannot pass the file off as one written before digests: format 1.1 needs it)."""
    data = write_valid(tmp_path / "good.safetensors")
    path = tmp_path / "flipped.safetensors"
    for position in range(len(data)):
        for bit in range(8):
            corrupt = bytearray(data)
            corrupt[position] ^= 1 << bit
            path.write_bytes(bytes(corrupt))
            with pytest.raises(CheckpointError):
                load_checkpoint(path)
