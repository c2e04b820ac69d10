"""Built-in feature extractors (registry kind ``feature_extractor``) for FID and Inception Score.

``inception``: torchvision's Inception-v3 architecture with weights read from a local file (the
``weights`` parameter, ``jemkit eval --inception-weights``, or ``$JEMKIT_INCEPTION_WEIGHTS``);
nothing is ever downloaded. Features are the 2048-d pooled activations, logits the 1000 ImageNet
classes. Inputs in ``[-1, 1]`` are what these weights expect once ``transform_input`` is off;
grey inputs are repeated to three channels and everything is resized bilinearly to 299x299.

``digits_classifier``: a small conv net trained on the digits TRAIN split. With the default
training parameters its weights ship with jemkit (``digits_classifier-v2.safetensors`` beside this
module, written once by ``scripts/train_digits_classifier.py``, sha256 checked at every load), so
digits-FID/IS/KID are the same on every machine. Other training parameters train a classifier on
first use (a few seconds on a CPU) and cache it in ``$JEMKIT_CACHE`` (default ``~/.cache/jemkit``);
such weights differ between machines. Features are its 32-d pooled activations, logits its 10
digit classes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jemkit import hookimpl
from jemkit.contracts import BuildContext, FeatureExtractor
from jemkit.errors import EvalError

if TYPE_CHECKING:
    from jemkit.registry import Registry

#: Environment variable naming the Inception weights file.
INCEPTION_ENV = "JEMKIT_INCEPTION_WEIGHTS"
#: Environment variable overriding the cache folder (default ``~/.cache/jemkit``).
CACHE_ENV = "JEMKIT_CACHE"


def cache_dir(explicit: str = "") -> Path:
    """The folder for cached weights: ``explicit``, else ``$JEMKIT_CACHE``, else ``~/.cache/jemkit``."""
    chosen = explicit or os.environ.get(CACHE_ENV, "") or "~/.cache/jemkit"
    return Path(chosen).expanduser()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- inception


@dataclass
class InceptionParams:
    """Inception-v3 weights file (torchvision layout: .safetensors, or .pt/.pth read with weights_only)."""

    #: Path of the weights; empty: ``$JEMKIT_INCEPTION_WEIGHTS``.
    weights: str = ""
    #: Side in pixels that inputs are resized to.
    resize: int = 299

    def __post_init__(self) -> None:
        if self.resize < 75:
            raise ValueError(f"resize must be at least 75 pixels (Inception-v3's smallest input), got {self.resize}")


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch file loaded with ``weights_only=True`` (no code runs)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"the file holds a {type(state).__name__}, not a state dict")
    return state


class InceptionFeatures(FeatureExtractor):
    """torchvision Inception-v3: pooled 2048-d features and class logits of inputs in ``[-1, 1]``."""

    def __init__(self, state: dict[str, Tensor], resize: int, weights: str) -> None:
        from torchvision.models import inception_v3

        super().__init__()
        state = {
            k.removeprefix("module."): v
            for k, v in state.items()
            if not k.removeprefix("module.").startswith("AuxLogits.")
        }
        if "fc.weight" not in state:
            raise ValueError("no 'fc.weight' tensor, so this is not an Inception-v3 state dict")
        self.num_classes = int(state["fc.weight"].shape[0])
        net = inception_v3(
            weights=None, aux_logits=False, init_weights=False, transform_input=False, num_classes=self.num_classes
        )
        net.load_state_dict(state, strict=True)
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net
        self.feature_dim = int(self.fc.in_features)
        self.resize = resize
        self.weights = weights
        self.data_set = "imagenet" if self.num_classes == 1000 else None

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        features = self.net(x)
        return features, self.fc(features)


def build_inception(params: InceptionParams, context: BuildContext) -> InceptionFeatures:
    """torchvision Inception-v3 with local weights (never downloaded): 2048-d pool features, 1000 logits."""
    shape = context.input_shape
    if shape is None or len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"inception needs grey or RGB image inputs, got input shape {shape}")
    given = params.weights or os.environ.get(INCEPTION_ENV, "")
    if not given:
        raise EvalError(
            "FID and Inception Score with the 'inception' feature extractor need Inception-v3 weights, and "
            "jemkit never downloads them. Pass --inception-weights PATH (torchvision's inception_v3 "
            f"IMAGENET1K_V1 state dict, .safetensors or .pth) or set ${INCEPTION_ENV}; or skip generation "
            "with --only, or choose another --feature-extractor."
        )
    path = Path(given).expanduser()
    if not path.is_file():
        raise EvalError(
            f"Inception weights file {str(path)!r} does not exist. Pass --inception-weights with the path of "
            f"torchvision's inception_v3 state dict (or fix ${INCEPTION_ENV})."
        )
    try:
        state = load_state_dict_file(path)
        extractor = InceptionFeatures(state, params.resize, f"{path} (sha256 {file_sha256(path)[:16]})")
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(
            f"Inception weights {str(path)!r} could not be loaded into torchvision's inception_v3: {first}. "
            "Use the IMAGENET1K_V1 state dict of torchvision.models.inception_v3."
        ) from None
    return extractor.eval()


# --------------------------------------------------------------------------- digits classifier

#: Version of the digits classifier's architecture and training; part of the weights' file names.
#: v2: same net and training as v1, but the default weights ship with jemkit instead of being
#: trained on each machine (v1 numbers from different machines are not comparable).
DIGITS_CLASSIFIER_VERSION = "v2"
#: The shipped weights (package data of ``jemkit_plugins.evaluation``).
SHIPPED_DIGITS_WEIGHTS = f"digits_classifier-{DIGITS_CLASSIFIER_VERSION}.safetensors"
#: SHA-256 of the shipped weights file, checked before it is loaded.
SHIPPED_DIGITS_SHA256 = "db27429f7472a32fd52f0cf95438634282926a9b04d245cf5c9b7fd8f142f7a1"
#: Safetensors metadata key holding the training record (JSON).
DIGITS_METADATA_KEY = "jemkit.digits_classifier"
#: Std of the Gaussian noise added to training inputs ([-1, 1] units), as JEM adds to its data.
DIGITS_TRAIN_NOISE = 0.03


@dataclass
class DigitsClassifierParams:
    """How the digits classifier is trained: the defaults load the shipped weights, other values train and cache one."""

    epochs: int = 20
    seed: int = 0
    batch_size: int = 64
    lr: float = 2.0e-3
    #: Cache folder; empty: ``$JEMKIT_CACHE`` or ``~/.cache/jemkit``.
    cache_dir: str = ""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"epochs and batch_size must be >= 1 and lr > 0, got {self.epochs}, {self.batch_size}, {self.lr}"
            )


class DigitsNet(nn.Module):
    """Conv net for ``[N, 1, 8, 8]`` digits: three 3x3 convs (16, 32, 32), one max-pool, average pool, linear."""

    feature_dim = 32
    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, self.feature_dim, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(self.feature_dim, self.num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.fc(features)


def _digits_splits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from jemkit_plugins.data.data_digits import DigitsParams, build_digits

    data = build_digits(DigitsParams(), BuildContext())
    train, test = data.train, data.test
    return train.x, train.targets, test.x, test.targets  # type: ignore[attr-defined]


def train_digits_classifier(params: DigitsClassifierParams) -> tuple[DigitsNet, float]:
    """Train :class:`DigitsNet` on the digits train split (CPU, seeded, global RNGs untouched); ``(net, test acc)``."""
    x_train, y_train, x_test, y_test = _digits_splits()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        net = DigitsNet()
        optimizer = torch.optim.Adam(net.parameters(), lr=params.lr)
        net.train()
        for _ in range(params.epochs):
            order = torch.randperm(len(x_train))
            for batch in torch.split(order, params.batch_size):
                x = x_train[batch] + DIGITS_TRAIN_NOISE * torch.randn_like(x_train[batch])
                loss = F.cross_entropy(net(x)[1], y_train[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x_test)[1].argmax(1) == y_test).double().mean())
    return net, accuracy


class DigitsClassifierFeatures(FeatureExtractor):
    """The independent digits classifier: 32-d pooled features and 10 digit logits of ``[N, 1, 8, 8]`` inputs."""

    def __init__(self, net: DigitsNet, weights: str, test_accuracy: float) -> None:
        super().__init__()
        self.net = net
        self.feature_dim = net.feature_dim
        self.num_classes = net.num_classes
        self.weights = weights
        self.data_set = "digits"
        #: Accuracy of the classifier on the clean digits test split.
        self.test_accuracy = test_accuracy

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x)


def _save_atomic(net: DigitsNet, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def shipped_digits_weights() -> Path:
    """Path of the shipped weights file (inside the installed ``jemkit_plugins.evaluation`` package)."""
    return Path(__file__).resolve().with_name(SHIPPED_DIGITS_WEIGHTS)


def is_shipped_configuration(params: DigitsClassifierParams) -> bool:
    """Whether ``params`` train the shipped weights (the defaults; ``cache_dir`` does not matter)."""
    default = DigitsClassifierParams()
    return (params.epochs, params.seed, params.batch_size, params.lr) == (
        default.epochs,
        default.seed,
        default.batch_size,
        default.lr,
    )


def load_shipped_digits_classifier(path: Path | None = None) -> DigitsClassifierFeatures:
    """The shipped classifier: its file's sha256 checked against :data:`SHIPPED_DIGITS_SHA256`, no training."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = shipped_digits_weights() if path is None else path
    fix = (
        "Reinstall jemkit (`pip install --force-reinstall jemkit`, or `git checkout` the file in a source "
        "checkout); a maintainer who retrained it on purpose with scripts/train_digits_classifier.py must also "
        "update SHIPPED_DIGITS_SHA256 in plugins/evaluation/feature_extractors.py."
    )
    if not path.is_file():
        raise EvalError(f"The digits classifier's shipped weights {str(path)!r} are missing. {fix}")
    digest = file_sha256(path)
    if digest != SHIPPED_DIGITS_SHA256:
        raise EvalError(
            f"The digits classifier's weights {str(path)!r} have sha256 {digest}, but jemkit shipped "
            f"{SHIPPED_DIGITS_SHA256}: the file was changed or damaged, and digits-FID/IS/KID computed with it "
            f"would not be comparable with anyone else's. {fix}"
        )
    net = DigitsNet()
    net.load_state_dict(load_file(str(path)))
    with safe_open(str(path), framework="pt") as handle:
        info = json.loads(handle.metadata()[DIGITS_METADATA_KEY])
    accuracy = float(info["test_accuracy"])
    weights = (
        f"jemkit digits classifier {DIGITS_CLASSIFIER_VERSION} (shipped with jemkit): seed {info['seed']}, "
        f"{info['epochs']} epochs on the digits train split (split_seed {info['split_seed']}), clean test accuracy "
        f"{accuracy:.4f}; {path.name} (sha256 {digest[:16]})"
    )
    return DigitsClassifierFeatures(net.eval(), weights, accuracy)


def load_or_train_digits_classifier(params: DigitsClassifierParams) -> DigitsClassifierFeatures:
    """The cached classifier for ``params``, training and caching it first when absent (not the shipped one)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = params
    name = f"digits_classifier-{DIGITS_CLASSIFIER_VERSION}-e{p.epochs}-s{p.seed}-b{p.batch_size}-lr{p.lr:g}"
    path = cache_dir(params.cache_dir) / f"{name}.safetensors"
    net = DigitsNet()
    if path.is_file():
        try:
            net.load_state_dict(load_file(str(path)))
            with safe_open(str(path), framework="pt") as handle:
                accuracy = float(json.loads(handle.metadata()[DIGITS_METADATA_KEY])["test_accuracy"])
        except Exception:  # a damaged cache file is rebuilt, not trusted
            path.unlink(missing_ok=True)
            return load_or_train_digits_classifier(params)
        how = "cached"
    else:
        net, accuracy = train_digits_classifier(params)
        info = {"test_accuracy": accuracy, "epochs": params.epochs, "seed": params.seed, "torch": torch.__version__}
        try:
            _save_atomic(net, path, {DIGITS_METADATA_KEY: json.dumps(info)})
        except OSError as exc:
            raise EvalError(
                f"Could not cache the digits classifier in {str(path.parent)!r} ({exc}). Set ${CACHE_ENV} to a "
                "writable folder."
            ) from None
        how = "trained now"
    weights = (
        f"jemkit digits classifier {DIGITS_CLASSIFIER_VERSION} ({how}): seed {params.seed}, {params.epochs} epochs "
        f"on the digits train split, clean test accuracy {accuracy:.4f}; {path} (sha256 {file_sha256(path)[:16]}; "
        "trained on this machine, so not comparable across machines)"
    )
    return DigitsClassifierFeatures(net.eval(), weights, accuracy)


def build_digits_classifier(params: DigitsClassifierParams, context: BuildContext) -> DigitsClassifierFeatures:
    """Independent digits classifier (shipped weights for the default parameters): 32-d features, 10 logits."""
    if context.input_shape is not None and tuple(context.input_shape) != (1, 8, 8):
        raise ValueError(
            f"digits_classifier reads 1x8x8 digits, but the model takes inputs of shape {context.input_shape}"
        )
    if is_shipped_configuration(params):
        return load_shipped_digits_classifier()
    return load_or_train_digits_classifier(params)


@hookimpl
def jemkit_register_feature_extractors(registry: Registry) -> None:
    registry.register("inception", build_inception, params=InceptionParams)
    registry.register("digits_classifier", build_digits_classifier, params=DigitsClassifierParams)
