"""Built-in data plugins: scikit-learn digits and the torchvision image sets (on tiny fake copies)."""

from __future__ import annotations

import pickle
import socket
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import (
    random_images,
    write_cifar10_arrays,
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_svhn,
    write_svhn_arrays,
)

from jemkit.contracts import BuildContext, DataSplits
from jemkit.errors import DataError
from jemkit.plugin_manager import load_plugins
from jemkit_plugins.data import data_torchvision
from jemkit_plugins.data.data_digits import DigitsParams, build_digits
from jemkit_plugins.data.data_torchvision import ImageDataParams

N_DIGITS = 1797
CONTEXT = BuildContext()
FACTORIES = {
    "cifar10": data_torchvision.build_cifar10,
    "cifar100": data_torchvision.build_cifar100,
    "svhn": data_torchvision.build_svhn,
}
WRITERS = {"cifar10": write_fake_cifar10, "cifar100": write_fake_cifar100, "svhn": write_fake_svhn}


def digits(**params) -> DataSplits:
    return build_digits(DigitsParams(**params), CONTEXT)


def images(name: str, root: Path, **params) -> DataSplits:
    params.setdefault("download", False)
    return FACTORIES[name](ImageDataParams(root=str(root), **params), CONTEXT)


def stack_x(dataset, n: int | None = None) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset) if n is None else n)])


def stack_y(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][1] for i in range(len(dataset))])


def row_multiset(x: torch.Tensor) -> Counter:
    return Counter(row.numpy().tobytes() for row in x.flatten(1))


# --------------------------------------------------------------------------- registration


def test_data_plugins_register_every_data_set():
    plugins = load_plugins(
        builtins=("jemkit_plugins.data.data_digits", "jemkit_plugins.data.data_torchvision"), entry_points=False
    )
    assert plugins.failures == []
    registry = plugins.registries["data"]
    assert registry.names() == ["cifar10", "cifar100", "digits", "svhn"]
    assert registry.get("digits").params is DigitsParams
    assert all(registry.get(n).params is ImageDataParams for n in FACTORIES)
    assert all(c.description != "(no description)" for c in registry)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_range():
    splits = digits()
    assert (splits.num_classes, splits.input_shape) == (10, (1, 8, 8))
    assert splits.class_names == [str(d) for d in range(10)]
    assert splits.val is None and splits.train_plain is splits.train
    x, y = splits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.shape == () and y.dtype == torch.int64
    xs = torch.cat([stack_x(splits.train), stack_x(splits.test)])
    assert xs.min().item() == -1.0 and xs.max().item() == 1.0
    ys = torch.cat([stack_y(splits.train), stack_y(splits.test)])
    assert set(ys.tolist()) == set(range(10))


@pytest.mark.parametrize(("fraction", "n_test"), [(0.2, 360), (0.5, 899), (0.1, 180)])
def test_digits_split_sizes(fraction, n_test):
    splits = digits(test_fraction=fraction)
    assert len(splits.test) == n_test
    assert len(splits.train) == N_DIGITS - n_test


def test_digits_split_is_deterministic_per_seed():
    a, b, c = digits(), digits(), digits(split_seed=7)
    assert torch.equal(stack_x(a.test), stack_x(b.test))
    assert torch.equal(stack_y(a.train), stack_y(b.train))
    assert not torch.equal(stack_x(a.test), stack_x(c.test))


def test_digits_split_is_stratified():
    splits = digits()
    total = Counter(stack_y(splits.train).tolist()) + Counter(stack_y(splits.test).tolist())
    in_test = Counter(stack_y(splits.test).tolist())
    assert set(in_test) == set(range(10))
    for label, count in total.items():
        assert abs(in_test[label] - 0.2 * count) <= 1


def test_digits_noise_is_fresh_with_the_requested_std():
    clean = digits()
    noisy = digits(noise_std=0.1)
    for split in ("train", "test"):
        x0 = getattr(clean, split)[3][0]
        reads = torch.stack([getattr(noisy, split)[3][0] for _ in range(3000)])
        deviation = reads - x0
        assert not torch.equal(reads[0], reads[1])
        assert deviation.std().item() == pytest.approx(0.1, rel=0.03)
        assert abs(deviation.mean().item()) < 0.005
        assert getattr(noisy, split)[3][1] == getattr(clean, split)[3][1]


def test_digits_val_split_is_held_out_of_train():
    full = digits()
    splits = digits(val_size=100)
    assert len(splits.val) == 100 and len(splits.train) == len(full.train) - 100
    assert torch.equal(stack_x(splits.test), stack_x(full.test))
    assert row_multiset(stack_x(splits.train)) + row_multiset(stack_x(splits.val)) == row_multiset(stack_x(full.train))
    assert torch.equal(stack_x(digits(val_size=100).val), stack_x(splits.val))
    assert not torch.equal(stack_x(digits(val_size=100, split_seed=5).val), stack_x(splits.val))


@pytest.mark.parametrize(
    "bad",
    [
        {"test_fraction": 0.0},
        {"test_fraction": 1.0},
        {"test_fraction": -0.1},
        {"noise_std": -0.01},
        {"noise_std": float("nan")},
        {"val_size": -1},
        {"split_seed": 1.5},
    ],
)
def test_digits_params_are_validated(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        DigitsParams(**bad)


def test_digits_val_size_too_large_is_a_data_error():
    with pytest.raises(DataError, match="val_size=5000"):
        digits(val_size=5000)


# --------------------------------------------------------------------------- torchvision sets on fake copies


@pytest.mark.parametrize(
    ("name", "n_train", "n_test", "num_classes"),
    [("cifar10", 100, 20, 10), ("cifar100", 200, 100, 100), ("svhn", 60, 30, 10)],
)
def test_image_sets_load_fake_copies(tmp_path, name, n_train, n_test, num_classes):
    WRITERS[name](tmp_path)
    splits = images(name, tmp_path, noise_std=0.0)
    assert (splits.num_classes, splits.input_shape) == (num_classes, (3, 32, 32))
    assert (len(splits.train), len(splits.test), splits.val) == (n_train, n_test, None)
    assert len(splits.class_names) == num_classes
    for dataset in (splits.train, splits.train_plain, splits.test):
        x, y = dataset[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert y.shape == () and y.dtype == torch.int64
    xs = stack_x(splits.test)
    assert xs.min().item() >= -1.0 and xs.max().item() <= 1.0
    assert xs.min().item() < -0.99 and xs.max().item() > 0.99
    labels = torch.cat([stack_y(splits.train), stack_y(splits.test)])
    assert set(labels.tolist()) == set(range(num_classes))  # svhn: label 10 on disk is digit 0
    assert torch.equal(splits.train.targets, stack_y(splits.train))
    assert torch.equal(splits.test.targets, stack_y(splits.test))


def test_cifar10_pixels_and_class_names_match_the_files(tmp_path):
    rng = np.random.default_rng(3)
    train = [(random_images(10, rng), np.arange(10)) for _ in range(5)]
    test = (random_images(10, rng), np.arange(10)[::-1])
    write_cifar10_arrays(tmp_path, train, test, class_names=[f"c{i}" for i in range(10)])
    splits = images("cifar10", tmp_path, noise_std=0.0)
    assert splits.class_names == [f"c{i}" for i in range(10)]
    expected = torch.from_numpy(test[0][4]).permute(2, 0, 1).float() / 127.5 - 1.0
    x, y = splits.test[4]
    torch.testing.assert_close(x, expected)
    assert y.item() == 5
    expected_train = torch.from_numpy(train[1][0][2]).permute(2, 0, 1).float() / 127.5 - 1.0
    torch.testing.assert_close(splits.train_plain[12][0], expected_train)


def test_svhn_pixels_match_the_mat_file(tmp_path):
    rng = np.random.default_rng(4)
    imgs = random_images(20, rng)
    write_svhn_arrays(tmp_path, "train", imgs, np.arange(20) % 10)
    write_svhn_arrays(tmp_path, "test", imgs[:10], np.arange(10))
    splits = images("svhn", tmp_path, noise_std=0.0)
    x, y = splits.test[7]
    torch.testing.assert_close(x, torch.from_numpy(imgs[7]).permute(2, 0, 1).float() / 127.5 - 1.0)
    assert y.item() == 7 and splits.test[0][1].item() == 0


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_augmentation_changes_train_items_only(tmp_path, name):
    WRITERS[name](tmp_path)
    splits = images(name, tmp_path, noise_std=0.0, augment=True)
    train_reads = [splits.train[0][0] for _ in range(20)]
    assert any(not torch.equal(train_reads[0], r) for r in train_reads[1:])
    assert all(r.min() >= -1.0 and r.max() <= 1.0 for r in train_reads)
    for dataset in (splits.test, splits.train_plain):
        reads = [dataset[0][0] for _ in range(5)]
        assert all(torch.equal(reads[0], r) for r in reads[1:])
    plain = images(name, tmp_path, noise_std=0.0, augment=False)
    assert plain.train_plain is plain.train
    assert torch.equal(plain.train[0][0], plain.train[0][0])
    assert torch.equal(plain.train[0][0], splits.train_plain[0][0])


def write_gradient_images(root: Path, name: str) -> None:
    """Images brightening from left (0) to right (248), so a horizontal flip shows."""
    ramp = np.broadcast_to((np.arange(32) * 8).astype(np.uint8)[None, None, :, None], (10, 32, 32, 3)).copy()
    labels = np.arange(10)
    if name == "svhn":
        write_svhn_arrays(root, "train", ramp, labels)
        write_svhn_arrays(root, "test", ramp, labels)
    else:
        write_cifar10_arrays(root, [(ramp, labels)] * 5, (ramp, labels))


@pytest.mark.parametrize(("name", "flips"), [("cifar10", True), ("svhn", False)])
def test_horizontal_flip_is_used_except_for_svhn(tmp_path, name, flips):
    write_gradient_images(tmp_path, name)
    splits = images(name, tmp_path, noise_std=0.0, augment=True)
    # random crops move the ramp by at most 4 px (reflect padding), so left < right unless flipped
    flipped = [(x[:, :, 0] > x[:, :, -1]).all().item() for x in (splits.train[0][0] for _ in range(60))]
    assert any(flipped) == flips
    if flips:
        assert not all(flipped)


def test_image_noise_is_added_to_train_and_test(tmp_path):
    write_fake_cifar10(tmp_path)
    clean = images("cifar10", tmp_path, noise_std=0.0, augment=False)
    noisy = images("cifar10", tmp_path, noise_std=0.05, augment=False)
    for split in ("train", "test"):
        x0 = getattr(clean, split)[1][0]
        deviation = torch.stack([getattr(noisy, split)[1][0] for _ in range(200)]) - x0
        assert deviation.std().item() == pytest.approx(0.05, rel=0.02)
        assert abs(deviation.mean().item()) < 0.002
    assert ImageDataParams().noise_std == 0.03


def test_image_val_split_is_held_out_plain_and_seeded(tmp_path):
    write_fake_cifar10(tmp_path)
    splits = images("cifar10", tmp_path, noise_std=0.0, val_size=10)
    assert (len(splits.train), len(splits.val), len(splits.train_plain)) == (90, 10, 90)
    assert set(splits.train.indices.tolist()).isdisjoint(splits.val.indices.tolist())
    assert sorted(splits.train.indices.tolist() + splits.val.indices.tolist()) == list(range(100))
    assert torch.equal(splits.val[3][0], splits.val[3][0])  # no augmentation on validation
    again = images("cifar10", tmp_path, val_size=10)
    other = images("cifar10", tmp_path, val_size=10, split_seed=99)
    assert torch.equal(again.val.indices, splits.val.indices)
    assert not torch.equal(other.val.indices, splits.val.indices)
    with pytest.raises(DataError, match="val_size=100"):
        images("cifar10", tmp_path, val_size=100)


@pytest.mark.parametrize(
    "bad", [{"root": ""}, {"noise_std": -1.0}, {"val_size": -5}, {"download": "yes"}, {"augment": 1}]
)
def test_image_params_are_validated(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        ImageDataParams(**bad)


def test_root_expands_user_and_is_relative_to_cwd(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path / "here")
    monkeypatch.chdir(tmp_path)
    assert len(images("cifar10", Path("here")).test) == 20
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(images("cifar10", Path("~/here")).test) == 20


# --------------------------------------------------------------------------- missing or broken data


@pytest.fixture
def offline(monkeypatch):
    """Every DNS lookup fails, as on a machine without network access."""

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_missing_data_without_download_is_a_data_error(tmp_path, name):
    with pytest.raises(DataError) as info:
        images(name, tmp_path, download=False)
    message = str(info.value)
    assert repr(name) in message and str(tmp_path) in message
    assert "data.download=false" in message and "data.root" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_failed_download_is_a_quick_data_error(tmp_path, name, offline):
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        images(name, tmp_path / "empty", download=True)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert repr(name) in message and str(tmp_path / "empty") in message
    assert "download failed" in message and "Name or service not known" in message
    assert "internet" in message and "data.root" in message
    expected = "cifar-10-batches-py" if name == "cifar10" else "train_32x32.mat"
    assert expected in message


def test_download_runs_under_a_socket_timeout(tmp_path, monkeypatch):
    seen: list[float | None] = []

    def refuse(*args, **kwargs):
        seen.append(socket.getdefaulttimeout())
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    before = socket.getdefaulttimeout()
    with pytest.raises(DataError, match="download failed"):
        images("cifar10", tmp_path, download=True)
    assert seen and all(t is not None and t <= data_torchvision.DOWNLOAD_SOCKET_TIMEOUT_S for t in seen)
    assert socket.getdefaulttimeout() == before


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_present_files_are_not_downloaded_again(tmp_path, name, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download although the files are present")

    monkeypatch.setattr(socket, "create_connection", no_network)
    WRITERS[name](tmp_path)
    assert len(images(name, tmp_path, download=True).test) > 0


def test_corrupt_cifar_batch_is_a_data_error(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="could not be read") as info:
        images("cifar10", tmp_path)
    assert "cifar-10-batches-py" in str(info.value) and str(tmp_path) in str(info.value)


def test_cifar_batch_of_wrong_size_is_a_data_error(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]}, f)
    with pytest.raises(DataError, match="could not be read"):
        images("cifar10", tmp_path)


def test_corrupt_svhn_file_is_a_data_error(tmp_path):
    write_fake_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="could not be read") as info:
        images("svhn", tmp_path)
    assert "test_32x32.mat" in str(info.value)


def test_svhn_downloads_only_the_missing_file(tmp_path, monkeypatch):
    import torchvision.datasets.svhn as tv_svhn

    requested: list[str] = []

    def fake_download(url, root, filename=None, md5=None, **kwargs):
        requested.append(filename)
        raise OSError("offline")

    monkeypatch.setattr(tv_svhn, "download_url", fake_download)
    write_fake_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match="download failed") as info:
        images("svhn", tmp_path, download=True)
    assert requested == ["test_32x32.mat"]  # the present (non-original) train file is kept
    assert "(missing test_32x32.mat)" in str(info.value)
