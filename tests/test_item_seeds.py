"""Training batches depend on (seed, epoch, index) only: workers, resume and the global RNG."""

from __future__ import annotations

import torch

from jemkit.config import load_recipe
from jemkit.item_seeds import SeededItems, item_seed
from jemkit.plugin_manager import load_plugins
from jemkit.train import Trainer

from conftest import RECIPES
from fakedata import write_fake_cifar10

PLUGINS = load_plugins(entry_points=False)


def _cifar_trainer(tmp_path, *extra: str) -> Trainer:
    root = tmp_path / "data"
    if not root.exists():
        write_fake_cifar10(root, n_per_batch=16)
    overrides = [
        f"data.root={root}", "data.download=false", "data.val_size=0", "model.backbone.depth=10",
        "model.backbone.widen_factor=1", "train.batch_size=8", *extra,
    ]
    return Trainer(PLUGINS, load_recipe(RECIPES / "jem_cifar10.yaml", overrides), tmp_path / "run")


def _epoch(trainer: Trainer, epoch: int) -> list[torch.Tensor]:
    return [batch.x.clone() for batch in trainer._batches(epoch)]


def test_item_seeds_differ_by_seed_epoch_and_index():
    seeds = {item_seed(s, e, i) for s in (1, 2) for e in (0, 1, 2) for i in range(100)}
    assert len(seeds) == 2 * 3 * 100
    assert all(0 <= s < 2**63 for s in seeds)
    assert item_seed(1, 0, 5) == item_seed(1, 0, 5)


def test_augmented_batches_are_the_same_with_worker_processes(tmp_path):
    in_process = _epoch(_cifar_trainer(tmp_path), 3)
    with_workers = _epoch(_cifar_trainer(tmp_path, "train.num_workers=2"), 3)
    assert len(in_process) == 10
    for a, b in zip(in_process, with_workers):
        assert torch.equal(a, b)
    # augmentation is on: the augmented view differs from the plain one, and epochs differ
    assert not all(torch.equal(a, b) for a, b in zip(in_process, _epoch(_cifar_trainer(tmp_path), 4)))


def test_loading_leaves_the_global_rng_alone_and_resume_mid_epoch_sees_the_same_batches(tmp_path):
    trainer = _cifar_trainer(tmp_path)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    full = _epoch(trainer, 0)
    assert torch.equal(torch.get_rng_state(), before), "data loading consumed global random numbers"
    trainer.batch_in_epoch = 6  # as after resuming at batch 6 of epoch 0
    torch.manual_seed(99)  # whatever the RNG state of the resumed process
    tail = _epoch(trainer, 0)
    assert len(tail) == 4
    for a, b in zip(full[6:], tail):
        assert torch.equal(a, b)


def test_seeded_items_repeat_noise_per_item_and_epoch():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.randn(3)

    first, again, other = SeededItems(Noisy(), 1, 0), SeededItems(Noisy(), 1, 0), SeededItems(Noisy(), 1, 1)
    assert torch.equal(first[2], again[2])
    assert not torch.equal(first[2], first[3])
    assert not torch.equal(first[2], other[2])


def test_negative_num_workers_is_a_recipe_error(cli):
    result = cli("run", RECIPES / "jem_digits.yaml", "train.num_workers=-1")
    assert result.code == 2 and "num_workers must be 0" in result.err
