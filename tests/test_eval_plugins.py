"""Built-in OOD sets and feature extractors: what each one yields, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from jemkit.contracts import BuildContext
from jemkit.errors import DataError
from jemkit.errors import EvalError
from jemkit_plugins.evaluation import feature_extractors as fx
from jemkit_plugins.evaluation import ood_sets

from fakedata import write_fake_cifar100, write_fake_svhn


def _context(shape=(1, 8, 8), n=10) -> BuildContext:
    generator = torch.Generator().manual_seed(0)
    test = TensorDataset(torch.rand(n, *shape, generator=generator) * 2 - 1, torch.arange(n) % 10)
    return BuildContext(input_shape=shape, num_classes=10, test_data=test)


def test_inverted_negates_the_test_inputs():
    context = _context()
    inverted = ood_sets.build_inverted(None, context)
    assert len(inverted) == len(context.test_data)
    for i in range(len(inverted)):
        assert torch.equal(inverted[i][0], -context.test_data[i][0])


def test_interpolations_mix_two_different_test_inputs():
    context = _context()
    data = ood_sets.build_interpolations(ood_sets.InterpolationParams(size=20, seed=3), context)
    x = context.test_data.tensors[0]
    pair_means = {(i, j): 0.5 * (x[i] + x[j]) for i in range(10) for j in range(i + 1, 10)}
    for k in range(len(data)):
        distance = min(float((data[k][0] - m).abs().max()) for m in pair_means.values())
        assert distance < 1e-6
    again = ood_sets.build_interpolations(ood_sets.InterpolationParams(size=20, seed=3), context)
    assert torch.equal(data.x, again.x), "seeded"


def test_uniform_noise_and_constant_images():
    context = _context((3, 32, 32))
    noise = ood_sets.build_uniform_noise(ood_sets.NoiseParams(size=50, seed=1), context)
    assert noise.x.min() >= -1 and noise.x.max() <= 1 and abs(float(noise.x.mean())) < 0.02
    assert not torch.equal(noise.x, ood_sets.build_uniform_noise(ood_sets.NoiseParams(size=50, seed=2), context).x)
    constant = ood_sets.build_constant(ood_sets.ConstantParams(size=20, noise_std=0.0), context)
    x = torch.stack([constant[i][0] for i in range(20)])
    assert torch.equal(x, x[:, :, :1, :1].expand_as(x)), "one colour per image"
    assert x[:, :, 0, 0].std(0).min() > 0.2, "colours differ between images"


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)])
def test_sklearn_patches_are_natural_image_patches(shape):
    data = ood_sets.build_sklearn_patches(ood_sets.PatchParams(size=40, noise_std=0.0), _context(shape))
    x = torch.stack([data[i][0] for i in range(40)])
    assert x.shape == (40, *shape) and x.min() >= -1 and x.max() <= 1
    assert (x.flatten(1).std(1) > 0.01).float().mean() > 0.5, "most patches have structure"
    assert int(data[0][1]) == ood_sets.NO_CLASS


def test_celeba_folder_resizes_and_crops(tmp_path):
    from PIL import Image

    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    image = np.zeros((218, 178, 3), dtype=np.uint8)
    image[:, 89:] = 255  # left half black, right half white
    Image.fromarray(image).save(folder / "000001.jpg", quality=100)
    (folder / "notes.txt").write_text("not an image")
    data = ood_sets.build_celeba_folder(
        ood_sets.ImageFolderParams(root=str(folder), noise_std=0.0), _context((3, 32, 32))
    )
    assert len(data) == 1
    x = data[0][0]
    assert x.shape == (3, 32, 32)
    assert x[:, :, :12].max() < -0.9 and x[:, :, -12:].min() > 0.9


def test_celeba_folder_errors_are_clear(tmp_path):
    context = _context((3, 32, 32))
    with pytest.raises(DataError, match="celeba_folder.root"):
        ood_sets.build_celeba_folder(ood_sets.ImageFolderParams(), context)
    with pytest.raises(DataError, match="does not exist"):
        ood_sets.build_celeba_folder(ood_sets.ImageFolderParams(root=str(tmp_path / "missing")), context)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        ood_sets.build_celeba_folder(ood_sets.ImageFolderParams(root=str(tmp_path / "empty")), context)


def test_torchvision_ood_sets_use_the_test_split(tmp_path):
    write_fake_svhn(tmp_path, n_test=30)
    write_fake_cifar100(tmp_path, n_test=40)
    params = ood_sets.TorchvisionOODParams(root=str(tmp_path), download=False, noise_std=0.0)
    svhn = ood_sets.build_svhn_ood(params, _context((3, 32, 32)))
    cifar100 = ood_sets.build_cifar100_ood(params, _context((3, 32, 32)))
    assert (len(svhn), len(cifar100)) == (30, 40)
    assert svhn[0][0].shape == (3, 32, 32) and svhn[0][0].min() >= -1 and svhn[0][0].max() <= 1
    with pytest.raises(ValueError, match="3x32x32"):
        ood_sets.build_svhn_ood(params, _context((1, 8, 8)))


# --------------------------------------------------------------------------- feature extractors


def test_digits_classifier_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("JEMKIT_CACHE", str(tmp_path / "cache"))
    params = fx.DigitsClassifierParams(epochs=1)
    first = fx.build_digits_classifier(params, BuildContext(input_shape=(1, 8, 8)))
    files = list((tmp_path / "cache").glob("digits_classifier-*.safetensors"))
    assert len(files) == 1 and "trained now" in first.weights
    monkeypatch.setattr(fx, "train_digits_classifier", lambda p: pytest.fail("the cached weights must be reused"))
    second = fx.build_digits_classifier(params, BuildContext(input_shape=(1, 8, 8)))
    assert "cached" in second.weights and second.test_accuracy == first.test_accuracy
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(first.features_and_logits(x)[1], second.features_and_logits(x)[1])
    with pytest.raises(ValueError, match="1x8x8"):
        fx.build_digits_classifier(params, BuildContext(input_shape=(3, 32, 32)))


def test_damaged_digits_classifier_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("JEMKIT_CACHE", str(tmp_path))
    params = fx.DigitsClassifierParams(epochs=1)
    fx.build_digits_classifier(params, BuildContext(input_shape=(1, 8, 8)))
    (path,) = tmp_path.glob("digits_classifier-*.safetensors")
    path.write_bytes(b"garbage")
    rebuilt = fx.build_digits_classifier(params, BuildContext(input_shape=(1, 8, 8)))
    assert "trained now" in rebuilt.weights and path.stat().st_size > 1000


def test_digits_classifier_training_is_deterministic():
    a, acc_a = fx.train_digits_classifier(fx.DigitsClassifierParams(epochs=1, seed=5))
    b, acc_b = fx.train_digits_classifier(fx.DigitsClassifierParams(epochs=1, seed=5))
    assert acc_a == acc_b
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_shipped_digits_classifier_loads_without_training(tmp_path, monkeypatch):
    from jemkit_plugins.data.data_digits import DigitsParams, build_digits

    monkeypatch.setenv("JEMKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(fx, "train_digits_classifier", lambda p: pytest.fail("the shipped weights need no training"))
    extractor = fx.build_digits_classifier(fx.DigitsClassifierParams(), BuildContext(input_shape=(1, 8, 8)))
    assert "shipped with jemkit" in extractor.weights and fx.SHIPPED_DIGITS_SHA256[:16] in extractor.weights
    assert not list(tmp_path.iterdir()), "nothing is cached"
    assert fx.file_sha256(fx.shipped_digits_weights()) == fx.SHIPPED_DIGITS_SHA256
    assert fx.shipped_digits_weights().stat().st_size < 100_000, "package data stays tiny"
    test = build_digits(DigitsParams(), BuildContext()).test
    with torch.no_grad():
        accuracy = float((extractor.features_and_logits(test.x)[1].argmax(1) == test.targets).double().mean())
    assert accuracy == pytest.approx(extractor.test_accuracy, abs=1e-9) and accuracy >= 0.95


def test_shipped_digits_classifier_sha256_is_checked(tmp_path, monkeypatch):
    changed = tmp_path / fx.SHIPPED_DIGITS_WEIGHTS
    data = bytearray(fx.shipped_digits_weights().read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    changed.write_bytes(bytes(data))
    monkeypatch.setattr(fx, "shipped_digits_weights", lambda: changed)
    with pytest.raises(EvalError, match="sha256") as info:
        fx.build_digits_classifier(fx.DigitsClassifierParams(), BuildContext(input_shape=(1, 8, 8)))
    assert fx.SHIPPED_DIGITS_SHA256 in str(info.value) and "scripts/train_digits_classifier.py" in str(info.value)
    monkeypatch.setattr(fx, "shipped_digits_weights", lambda: tmp_path / "gone.safetensors")
    with pytest.raises(EvalError, match="missing"):
        fx.build_digits_classifier(fx.DigitsClassifierParams(), BuildContext(input_shape=(1, 8, 8)))


@pytest.mark.slow
def test_default_digits_classifier_is_accurate(tmp_path, monkeypatch):
    monkeypatch.setenv("JEMKIT_CACHE", str(tmp_path))
    assert (
        fx.build_digits_classifier(fx.DigitsClassifierParams(), BuildContext(input_shape=(1, 8, 8))).test_accuracy
        >= 0.95
    )


def test_inception_needs_local_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(fx.INCEPTION_ENV, raising=False)
    context = BuildContext(input_shape=(3, 32, 32))
    with pytest.raises(EvalError, match="--inception-weights") as info:
        fx.build_inception(fx.InceptionParams(), context)
    assert fx.INCEPTION_ENV in str(info.value) and "never downloads" in str(info.value)
    monkeypatch.setenv(fx.INCEPTION_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(EvalError, match="does not exist"):
        fx.build_inception(fx.InceptionParams(), context)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(EvalError, match="could not be loaded"):
        fx.build_inception(fx.InceptionParams(weights=str(wrong)), context)


def test_inception_loads_a_torch_file_without_downloading(tmp_path, monkeypatch):
    from torchvision.models import inception_v3

    def no_download(*args, **kwargs):
        raise AssertionError("jemkit must never download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    torch.manual_seed(0)
    path = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    extractor = fx.build_inception(
        fx.InceptionParams(weights=str(path), resize=75), BuildContext(input_shape=(1, 8, 8))
    )
    with torch.no_grad():
        features, logits = extractor.features_and_logits(torch.rand(2, 1, 8, 8) * 2 - 1)
    assert features.shape == (2, 2048) and logits.shape == (2, 1000)
    assert str(path) in extractor.weights and "sha256" in extractor.weights and extractor.data_set == "imagenet"
