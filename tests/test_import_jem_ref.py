"""``jemkit import jem-ref``: reference JEM checkpoints become jemkit runs with the same logits.

The reference model below is written here from the format's description (plugins/importers/
jem_ref.py's docstring), with the reference's module names so that its state dict has the
reference keys; it is saved the reference's way, ``torch.save({"model_state_dict": ...,
"replay_buffer": ...})``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from jemkit.contracts import BuildContext
from jemkit.plugin_manager import load_plugins
from jemkit.run_index import eval_report_path
from jemkit.run_open import open_run
from jemkit.testing import check_importer, contract_cases
from jemkit_plugins.importers import jem_ref

from conftest import RECIPES, run_cli
from fakedata import write_fake_cifar10

LEAK = 0.2
BUFFER_SIZE = 24


# --------------------------------------------------------------------------- the reference layout


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


class RefBlock(nn.Module):
    """Pre-activation block: norm, LeakyReLU, conv3x3, (dropout), norm, LeakyReLU, strided conv3x3, 1x1 shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.bn1 = _norm(norm, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.bn2 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.leaky_relu(self.bn1(x), LEAK))
        out = self.conv2(F.leaky_relu(self.bn2(out), LEAK))
        return out + self.shortcut(x)


class RefWideResNet(nn.Module):
    def __init__(self, depth: int, width: int, norm: str, num_classes: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        stages = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, stages[0], 3, padding=1, bias=True)
        in_planes = stages[0]
        for index, (planes, stride) in enumerate(zip(stages[1:], (1, 2, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(RefBlock(in_planes, planes, stride if i == 0 else 1, norm))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.bn1 = _norm(norm, stages[3])
        self.linear = nn.Linear(stages[3], num_classes)  # unused by the JEM model
        self.last_dim = stages[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.leaky_relu(self.bn1(out), LEAK)
        return F.avg_pool2d(out, 8).flatten(1)


class RefCCF(nn.Module):
    def __init__(self, depth: int, width: int, norm: str, num_classes: int = 10) -> None:
        super().__init__()
        self.f = RefWideResNet(depth, width, norm, num_classes)
        self.energy_output = nn.Linear(self.f.last_dim, 1)
        self.class_output = nn.Linear(self.f.last_dim, num_classes)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_output(self.f(x))


def reference_model(depth: int, width: int, norm: str, num_classes: int = 10, seed: int = 0) -> RefCCF:
    """A reference CCF with random weights and, for batch norm, random running statistics (eval mode)."""
    torch.manual_seed(seed)
    model = RefCCF(depth, width, norm, num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(123)
    return model.eval()


def save_reference(path: Path, model: RefCCF, buffer: torch.Tensor | None = None, **extra) -> Path:
    if buffer is None:
        buffer = torch.rand(BUFFER_SIZE, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.save({"model_state_dict": model.state_dict(), "replay_buffer": buffer, **extra}, path)
    return path


class Arguments:
    """Stands for the argparse namespace some training scripts save next to the weights."""

    def __init__(self) -> None:
        self.lr = 1e-4


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def plugins():
    loaded = load_plugins()
    assert not loaded.failures, [f.message() for f in loaded.failures]
    return loaded


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar10(root)
    return root


def _open(plugins, run_dir: Path, num_classes: int = 10):
    """The imported run through the kernel's one way to open a run (no data set: a context is passed)."""
    context = BuildContext(device=torch.device("cpu"), input_shape=(3, 32, 32), num_classes=num_classes)
    return open_run(plugins, run_dir, context=context)


def _import(tmp_path: Path, ckpt: Path, *extra: str, out: str = "run"):
    result = run_cli("import", "jem-ref", ckpt, "--out", tmp_path / out, *extra)
    return result, tmp_path / out


# --------------------------------------------------------------------------- same logits


@pytest.mark.parametrize(
    ("depth", "width", "norm"),
    [(10, 2, "none"), (10, 2, "batch"), (16, 1, "none")],
    ids=["wrn10-2-none", "wrn10-2-batch", "wrn16-1-none"],
)
def test_imported_run_gives_the_reference_logits_and_buffer(tmp_path, plugins, depth, width, norm):
    model = reference_model(depth, width, norm)
    buffer = torch.rand(BUFFER_SIZE, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2.2 - 1.1
    ckpt = save_reference(tmp_path / "ckpt.pt", model, buffer)
    result, run_dir = _import(tmp_path, ckpt)
    assert result.code == 0, result.err
    assert "imported" in result.out

    run = _open(plugins, run_dir)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.classify(x)
        got = run.model(x)
    assert got.shape == (6, 10)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(run.sampler.state_dict()["buffer"], buffer)
    assert run.step == 0 and run.checkpoint.name == "step_000000.safetensors"

    cfg = OmegaConf.load(run_dir / "config.yaml")
    backbone = cfg.model.backbone
    assert (backbone.name, backbone.depth, backbone.widen_factor, backbone.norm) == ("wrn", depth, width, norm)
    assert cfg.sampler.init.name == "replay_buffer" and cfg.sampler.init.size == BUFFER_SIZE
    assert cfg.data.name == "cifar10" and cfg.name == "ckpt"

    record = json.loads((run_dir / "imported.json").read_text())
    assert record["format"] == "jem_ref"
    assert record["source"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert record["source"]["path"] == str(ckpt.resolve())
    assert record["inferred"]["architecture"] == {
        "backbone": "wrn", "depth": depth, "widen_factor": width, "norm": norm, "in_channels": 3, "num_classes": 10,
    }
    unused = ["energy_output.bias", "energy_output.weight", "f.linear.bias", "f.linear.weight"]
    assert record["inferred"]["ignored_keys"] == unused
    assert record["inferred"]["replay_buffer"]["size"] == BUFFER_SIZE
    assert record["inferred"]["replay_buffer"]["min"] == pytest.approx(float(buffer.min()))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder is left"


def test_hundred_classes_and_a_data_parallel_prefix(tmp_path, plugins):
    model = reference_model(10, 1, "batch", num_classes=100)
    path = tmp_path / "wrapped.pt"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from nn.DataParallel
    torch.save({"model_state_dict": state, "replay_buffer": torch.zeros(4, 3, 32, 32), "epoch": 7}, path)
    result, run_dir = _import(tmp_path, path, "--name", "c100")
    assert result.code == 0, result.err
    run = _open(plugins, run_dir, num_classes=100)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(run.model(x), model.classify(x), rtol=1e-4, atol=1e-5)
    assert run.cfg.data.name == "cifar100" and run.cfg.name == "c100"
    record = json.loads((run_dir / "imported.json").read_text())
    assert record["inferred"]["key_prefix_removed"] == "module." and record["inferred"]["ignored_entries"] == ["epoch"]


def test_the_recipe_is_jem_cifar10_with_the_imported_backbone():
    """The importer's copy of recipes/jem_cifar10.yaml has every key of the file's sections it carries,
    with the same values, except the ones an import sets."""
    shipped = OmegaConf.to_container(OmegaConf.load(RECIPES / "jem_cifar10.yaml"), resolve=True)
    copy = jem_ref.JEM_CIFAR10_RECIPE
    set_by_import = {("model", "backbone", key) for key in ("depth", "widen_factor", "norm")}

    def leaves(tree, prefix=()):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, (*prefix, key))
            else:
                yield (*prefix, key), value

    ours = dict(leaves(copy))
    theirs = {path: value for path, value in leaves(shipped) if path[0] in copy}
    assert set(ours) == set(theirs)
    assert {p: v for p, v in ours.items() if p not in set_by_import} == {
        p: v for p, v in theirs.items() if p not in set_by_import
    }


# --------------------------------------------------------------------------- refusals


def _refused(result, out: Path, *phrases: str) -> None:
    assert result.code == 2, (result.out, result.err)
    message = " ".join(result.err.split())
    assert "Traceback" not in result.err
    for phrase in phrases:
        assert phrase in message, message
    assert not out.exists() or not any(out.iterdir())


def test_a_file_that_needs_code_to_unpickle_is_refused(tmp_path):
    ckpt = save_reference(tmp_path / "pickled.pt", reference_model(10, 1, "none"), args=Arguments())
    result, out = _import(tmp_path, ckpt)
    _refused(result, out, "needs code to unpickle", "Arguments", "weights_only=True")


def test_missing_keys_and_unexpected_shapes_are_refused(tmp_path):
    model = reference_model(10, 1, "none")
    state = model.state_dict()
    del state["f.layer2.0.conv2.bias"]
    torch.save({"model_state_dict": state, "replay_buffer": torch.zeros(2, 3, 32, 32)}, tmp_path / "missing.pt")
    result, out = _import(tmp_path, tmp_path / "missing.pt")
    _refused(result, out, "WRN-10-1", "lacks f.layer2.0.conv2.bias")

    state = model.state_dict()
    state["class_output.bias"] = torch.zeros(11)
    torch.save({"model_state_dict": state, "replay_buffer": torch.zeros(2, 3, 32, 32)}, tmp_path / "shape.pt")
    result, out = _import(tmp_path, tmp_path / "shape.pt", out="run2")
    _refused(result, out, "unexpected shapes", "class_output.bias (11,) (expected (10,))")

    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "nobuffer.pt")
    result, out = _import(tmp_path, tmp_path / "nobuffer.pt", out="run3")
    _refused(result, out, "no 'replay_buffer' entry")


def test_a_buffer_of_the_wrong_shape_is_refused(tmp_path):
    ckpt = save_reference(tmp_path / "buffer.pt", reference_model(10, 1, "none"), torch.zeros(5, 3, 28, 28))
    result, out = _import(tmp_path, ckpt)
    _refused(result, out, "'replay_buffer' has shape [5, 3, 28, 28], not [N, 3, 32, 32]")


def test_missing_ckpt_existing_out_garbage_and_unknown_format_are_refused(tmp_path):
    result, out = _import(tmp_path, tmp_path / "nowhere.pt")
    _refused(result, out, "does not exist")

    ckpt = save_reference(tmp_path / "ok.pt", reference_model(10, 1, "none"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    result, out = _import(tmp_path, ckpt, out="taken")
    assert result.code == 2 and "not empty" in " ".join(result.err.split())
    assert (out / "notes.txt").read_text() == "keep me"

    (tmp_path / "garbage.pt").write_bytes(b"\x00 not a checkpoint" * 50)
    result, out = _import(tmp_path, tmp_path / "garbage.pt", out="run4")
    _refused(result, out, "Cannot import")

    result = run_cli("import", "jem-reff", ckpt, "--out", tmp_path / "run5")
    _refused(result, tmp_path / "run5", "Did you mean 'jem_ref'")


@pytest.mark.parametrize("component", contract_cases(load_plugins().registries.components(), kinds=["importer"]))
def test_importer_contract(component):
    check_importer(component)


# --------------------------------------------------------------------------- eval and sample


def test_sample_and_eval_open_the_imported_run(tmp_path, fake_cifar):
    model = reference_model(10, 1, "none")
    ckpt = save_reference(tmp_path / "ckpt.pt", model)
    result, run_dir = _import(
        tmp_path, ckpt, "--data-root", str(fake_cifar), "--set", "data.val_size=0", "--set", "data.noise_std=0"
    )
    assert result.code == 0, result.err

    sample = run_cli("sample", run_dir, "--n", "4", "--steps", "2", "--out", tmp_path / "x.png")
    assert sample.code == 0, sample.err
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    small = ["--only", "acc", "--refine-steps", "1", "--batch-size", "20", "--device", "cpu"]
    evaluated = run_cli("eval", run_dir, *small)
    assert evaluated.code == 0, evaluated.err
    report = json.loads(eval_report_path(run_dir).read_text())
    accuracy = next(iter(report["runs"].values()))["accuracy"]
    # the reference model's accuracy and NLL (nats) on the same (noise-free) test images
    images, labels = _fake_test_split(fake_cifar)
    with torch.no_grad():
        logits = model.classify(images)
    assert accuracy["n"] == len(labels)
    assert accuracy["clean"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert accuracy["nll"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)


def _fake_test_split(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The fake CIFAR-10 test images in [-1, 1] and their labels, read as torchvision does."""
    import pickle

    import numpy as np

    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as handle:
        batch = pickle.load(handle, encoding="latin1")
    rows = np.asarray(batch["data"], dtype=np.float32).reshape(-1, 3, 32, 32)
    return torch.from_numpy(rows / 127.5 - 1.0), torch.tensor(batch["labels"])


def test_sample_needs_no_data_set_on_disk(tmp_path):
    ckpt = save_reference(tmp_path / "ckpt.pt", reference_model(10, 1, "none"))
    empty = tmp_path / "no_data"
    empty.mkdir()
    result, run_dir = _import(tmp_path, ckpt, "--data-root", str(empty), "--set", "data.download=false")
    assert result.code == 0, result.err
    sample = run_cli("sample", run_dir, "--n", "4", "--steps", "2", "--out", tmp_path / "x.png")
    assert sample.code == 0, sample.err
