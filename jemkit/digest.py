"""Payload digests of a checkpoint: one SHA-256 per tensor and one over the header's state skeleton.

safetensors stores no checksum, so a flipped bit inside a weight loads silently. A checkpoint
therefore records, in its header (``jemkit.digest``), the SHA-256 of every tensor's dtype, shape
and raw bytes, and of the JSON skeleton plus user metadata (the recipe, versions, plugin list).
Loading recomputes them and names each entry that differs. SHA-256 because CPUs with the SHA
extensions (``sha_ni``: most x86 since 2017-2019, ARMv8) hash it faster than blake2b and md5, and a
cryptographic digest cannot be matched by accident; sha1 and crc32 are faster still but weaker (a
CRC only catches random errors). A large payload is hashed by several threads, one tensor each
(``benchmarks/hash_cost.py`` measures the cost; ``benchmarks/README.md`` has the figures).

Checkpoints written before digests existed have no ``jemkit.digest`` entry; they load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

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


#: Payloads of at least this many bytes are hashed by several threads, one tensor each (hashlib
#: releases the GIL while it hashes, so tensors hash in parallel; each digest stays the same).
PARALLEL_MIN_BYTES = 32 * 2**20
#: At most this many hashing threads.
MAX_THREADS = 8


def default_threads() -> int:
    """Hashing threads: the usable CPU cores, at most :data:`MAX_THREADS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_THREADS, cores))


def tensor_digests(tensors: Mapping[str, torch.Tensor], threads: int | None = None) -> dict[str, str]:
    """:func:`tensor_digest` of every tensor; ``threads`` (default :func:`default_threads` for a
    payload of :data:`PARALLEL_MIN_BYTES` or more, else 1) hash different tensors at once."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if threads is None:
        threads = default_threads() if total >= PARALLEL_MIN_BYTES else 1
    if threads <= 1 or len(tensors) < 2:
        return {key: tensor_digest(t) for key, t in tensors.items()}
    # Largest first, so that the biggest tensor (a replay buffer) starts at once.
    order = sorted(tensors, key=lambda k: -tensors[k].numel() * tensors[k].element_size())
    with ThreadPoolExecutor(max_workers=threads) as pool:
        digests = dict(zip(order, pool.map(lambda k: tensor_digest(tensors[k]), order)))
    return {key: digests[key] for key in tensors}


def compute(
    tensors: Mapping[str, torch.Tensor], skeleton: str, metadata: Mapping[str, str], threads: int | None = None
) -> str:
    """The ``jemkit.digest`` header value for a checkpoint's payload (JSON text); ``threads`` as in
    :func:`tensor_digests`."""
    return json.dumps(
        {
            "algorithm": ALGORITHM,
            "header": header_digest(skeleton, metadata),
            "tensors": tensor_digests(tensors, threads),
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def damaged_entries(
    recorded: str,
    tensors: Mapping[str, torch.Tensor],
    skeleton: str,
    metadata: Mapping[str, str],
    threads: int | None = None,
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
    actual = tensor_digests(tensors, threads)
    for key in sorted(set(tensors) | set(expected_tensors)):
        if key not in tensors or key not in expected_tensors or actual[key] != expected_tensors[key]:
            damaged.append(key)
    return damaged


__all__ = [
    "ALGORITHM",
    "DIGEST_KEY",
    "HEADER_ENTRY",
    "compute",
    "damaged_entries",
    "default_threads",
    "header_digest",
    "tensor_digest",
    "tensor_digests",
]
