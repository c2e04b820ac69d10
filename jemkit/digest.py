"""Payload digests of a checkpoint: one SHA-256 per tensor and one over the header's state skeleton.

safetensors stores no checksum, so a flipped bit inside a weight loads silently. A checkpoint
therefore records, in its header (``jemkit.digest``), the SHA-256 of every tensor's dtype, shape
and raw bytes, and of the JSON skeleton plus user metadata (the recipe, versions, plugin list).
Loading recomputes them and names each entry that differs. SHA-256 because CPUs with the SHA
extensions (most x86 since 2017-2019, ARMv8) hash at 1-2 GB/s per core, faster than blake2b or
md5 there (``benchmarks/README.md`` has the figures), and a cryptographic digest cannot be matched
by accident.

Checkpoints written before digests existed have no ``jemkit.digest`` entry; they load unverified.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch

#: Header metadata key holding the digests (a JSON object).
DIGEST_KEY = "jemkit.digest"
#: The hash function, recorded in the header so that another one can follow.
ALGORITHM = "sha256"
#: Name of the pseudo-entry that covers the skeleton and the user metadata.
HEADER_ENTRY = "<header: state skeleton and metadata>"


def tensor_digest(tensor: torch.Tensor) -> str:
    """Hex SHA-256 of a CPU tensor's dtype, shape and bytes (row-major)."""
    h = hashlib.new(ALGORITHM)
    h.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    flat = tensor.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    if flat.numel():
        h.update(flat.contiguous().view(torch.uint8).numpy().data)
    return h.hexdigest()


def header_digest(skeleton: str, metadata: Mapping[str, str]) -> str:
    """Hex SHA-256 of the skeleton and the user metadata (keys sorted)."""
    h = hashlib.new(ALGORITHM)
    h.update(skeleton.encode("utf-8"))
    h.update(json.dumps(sorted(metadata.items()), ensure_ascii=True).encode("utf-8"))
    return h.hexdigest()


def compute(tensors: Mapping[str, torch.Tensor], skeleton: str, metadata: Mapping[str, str]) -> str:
    """The ``jemkit.digest`` header value for a checkpoint's payload (JSON text)."""
    return json.dumps(
        {
            "algorithm": ALGORITHM,
            "header": header_digest(skeleton, metadata),
            "tensors": {key: tensor_digest(t) for key, t in tensors.items()},
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def damaged_entries(
    recorded: str, tensors: Mapping[str, torch.Tensor], skeleton: str, metadata: Mapping[str, str]
) -> list[str]:
    """Entries whose digest differs from ``recorded`` (empty when all verify).

    Tensors present in the file but absent from the record, or recorded but missing, count as
    damaged too. A record that is not valid JSON, or names another algorithm, is reported as a
    damaged header.
    """
    try:
        record = json.loads(recorded)
        expected_tensors = dict(record["tensors"])
        if record["algorithm"] != ALGORITHM:
            return [f"{HEADER_ENTRY} (digest algorithm {record['algorithm']!r} is unknown)"]
        expected_header = record["header"]
    except (ValueError, KeyError, TypeError):
        return [f"{HEADER_ENTRY} (the digest record itself is unreadable)"]
    damaged = [] if header_digest(skeleton, metadata) == expected_header else [HEADER_ENTRY]
    for key in sorted(set(tensors) | set(expected_tensors)):
        if key not in tensors or key not in expected_tensors or tensor_digest(tensors[key]) != expected_tensors[key]:
            damaged.append(key)
    return damaged


__all__ = ["ALGORITHM", "DIGEST_KEY", "HEADER_ENTRY", "compute", "damaged_entries", "header_digest", "tensor_digest"]
