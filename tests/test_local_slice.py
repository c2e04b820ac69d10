"""Data-parallel batch split: ranks get disjoint, equal slices that together cover the global batch."""

from __future__ import annotations

import pytest

from jemkit.distributed import DistInfo, local_slice


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_ranks_get_disjoint_equal_slices_that_cover_the_batch(world_size):
    batch = [17 * i % 101 for i in range(24)]  # a shuffled-looking global batch, divisible by every world size here
    slices = [local_slice(batch, DistInfo(rank=r, world_size=world_size, local_rank=r)) for r in range(world_size)]
    assert all(len(s) == len(batch) // world_size for s in slices)
    flat = [i for s in slices for i in s]
    assert flat == batch, "in rank order the slices are the global batch, each index exactly once"


def test_single_process_gets_the_whole_batch():
    batch = list(range(10))
    assert local_slice(batch, DistInfo()) == batch
