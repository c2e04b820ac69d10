"""Checkpoint payload digests: every flipped bit, changed shape or dtype, or edited header is named."""

from __future__ import annotations

import json

import torch

from jemkit.digest import HEADER_ENTRY, compute, damaged_entries, tensor_digest

META = {"jemkit.recipe": "name: x\n"}
SKELETON = '{"$dict":[["w",{"$tensor":"w"}]]}'


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=g),
        "b": torch.randn(3, generator=g).to(torch.bfloat16),
        "n": torch.tensor(7),
        "empty": torch.zeros(0, 2),
    }


def test_untouched_payload_verifies():
    tensors = _tensors()
    record = compute(tensors, SKELETON, META)
    assert damaged_entries(record, tensors, SKELETON, META) == []
    assert json.loads(record)["algorithm"] == "sha256"


def test_every_single_bit_flip_of_a_tensor_is_named():
    tensors = _tensors()
    record = compute(tensors, SKELETON, META)
    raw = tensors["w"].view(torch.uint8).reshape(-1)
    for bit in range(raw.numel() * 8):
        flipped = raw.clone()
        flipped[bit // 8] ^= 1 << (bit % 8)
        damaged = {**tensors, "w": flipped.view(torch.float32).reshape(4, 3)}
        assert damaged_entries(record, damaged, SKELETON, META) == ["w"], bit


def test_shape_dtype_missing_extra_and_header_changes_are_named():
    tensors = _tensors()
    record = compute(tensors, SKELETON, META)
    assert damaged_entries(record, {**tensors, "w": tensors["w"].reshape(3, 4)}, SKELETON, META) == ["w"]
    assert damaged_entries(record, {**tensors, "b": tensors["b"].view(torch.int16)}, SKELETON, META) == ["b"]
    without_n = {k: v for k, v in tensors.items() if k != "n"}
    assert damaged_entries(record, without_n, SKELETON, META) == ["n"]
    assert damaged_entries(record, {**tensors, "extra": torch.ones(1)}, SKELETON, META) == ["extra"]
    assert damaged_entries(record, tensors, SKELETON.replace('"w"}', '"b"}'), META) == [HEADER_ENTRY]
    assert damaged_entries(record, tensors, SKELETON, {"jemkit.recipe": "name: y\n"}) == [HEADER_ENTRY]
    assert damaged_entries("{not json", tensors, SKELETON, META)[0].startswith(HEADER_ENTRY)


def test_digest_depends_on_bytes_not_on_memory_layout():
    t = torch.arange(12.0).reshape(3, 4)
    assert tensor_digest(t) == tensor_digest(t.t().contiguous().t().contiguous())
    assert tensor_digest(t) != tensor_digest(t.t().contiguous())
