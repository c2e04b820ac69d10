"""The class-conditional replay buffer's class_prior: where unlabelled draws (p(x) negatives) start."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from jemkit.testing import tiny_context
from plugins.samplers.sampling import ReplayBuffer, ReplayBufferParams, build_replay_buffer, data_class_prior


def _context(labels):
    labels = torch.tensor(labels)
    return tiny_context(num_classes=2, train_data=TensorDataset(torch.zeros(len(labels), 1, 8, 8), labels))


def _block_share(buffer: ReplayBuffer, n: int = 40_000) -> float:
    """Fraction of unlabelled starts drawn from block 1."""
    slots = buffer.start(n, None, torch.device("cpu")).slots
    return float((slots >= buffer.block).double().mean())


def test_data_prior_draws_blocks_in_the_training_sets_proportion():
    context = _context([0] * 10 + [1] * 30)  # 25 % / 75 %
    assert data_class_prior(context).tolist() == [0.25, 0.75]
    torch.manual_seed(0)
    data = build_replay_buffer(ReplayBufferParams(size=200, reinit_freq=0.0, class_conditional=True, class_prior="data"), context)
    assert _block_share(data) == pytest.approx(0.75, abs=0.01)  # sd of the share: 0.002
    uniform = build_replay_buffer(ReplayBufferParams(size=200, reinit_freq=0.0, class_conditional=True), context)
    assert _block_share(uniform) == pytest.approx(0.5, abs=0.01)
    # labelled draws stay in their class's block whatever the prior
    slots = data.start(1000, torch.zeros(1000, dtype=torch.long), torch.device("cpu")).slots
    assert int(slots.max()) < data.block


def test_uniform_prior_draws_exactly_as_before():
    """The default keeps the historical random stream: runs and their resumes are unchanged."""
    buffer = ReplayBuffer((1, 8, 8), 100, 0.0, num_classes=4)
    torch.manual_seed(3)
    slots = buffer._slots(50, None)
    torch.manual_seed(3)
    expected = torch.randint(0, 25, (50,)) + torch.randint(0, 4, (50,)) * 25
    assert torch.equal(slots, expected)


def test_bad_prior_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="needs class_conditional: true"):
        ReplayBufferParams(class_prior="data")
    with pytest.raises(ValueError, match="class_prior must be one of uniform, data"):
        ReplayBufferParams(class_conditional=True, class_prior="empirical")
    with pytest.raises(ValueError, match="needs the training set's labels"):
        data_class_prior(tiny_context(num_classes=2, train_data=None))
    with pytest.raises(ValueError, match="one probability per class block"):
        ReplayBuffer((1, 8, 8), 100, 0.0, num_classes=4, class_prior=torch.ones(3))
