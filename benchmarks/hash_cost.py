"""What the checkpoint digest costs: hash throughput and its share of a checkpoint write.

    python benchmarks/hash_cost.py [--repeats 3] [--dir DIR] [--json OUT.json] [--small]

Builds the training state of the JEM paper's CIFAR-10 recipe on the CPU: the WRN-28-10 model of
``recipes/jem_cifar10.yaml`` (built through jemkit's registry), its Adam state (both moments
populated by one step) and a replay buffer of 10,000 x 3 x 32 x 32 float32 values (117 MiB) with
labels, then times, with one torch thread (``torch.set_num_threads(1)``), the median of ``--repeats`` runs:

* ``digest``: :func:`jemkit.digest.compute` over every tensor and the skeleton (what a save adds),
  on one thread and on the threads ``save_checkpoint`` uses (:func:`jemkit.digest.default_threads`);
* each candidate hash (sha256, sha1, blake2b, md5, zlib.crc32) over the same bytes, in GB/s;
* ``save``: :func:`jemkit.checkpoint.save_checkpoint` into ``--dir`` (encode, digest, serialise,
  write, fsync, rename) and the same with the digest replaced by a constant, so that the share of
  the digest in a checkpoint write is ``(save - save without digest) / save``;
* ``load``: :func:`jemkit.checkpoint.load_checkpoint` (which verifies) and the verification alone.

The JSON records the CPU model, its hash-relevant flags (``sha_ni``, ``avx2``, ``avx512f``, ...),
the OpenSSL version behind ``hashlib``, torch and Python versions, the core count and the 1-minute
load average before and after (the machines these run on are shared). ``--small`` uses a WRN-10-2
and 1,000 chains, for a quick check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
HASH_FLAGS = ("sha_ni", "sha", "avx2", "avx512f", "avx512bw", "vaes", "aes", "pclmulqdq", "sse4_2", "bmi2")


def cpu_description() -> dict[str, Any]:
    """CPU model and its hash-relevant flags (from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in HASH_FLAGS if f in flags], "cores": os.cpu_count()}


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def build_state(small: bool) -> dict[str, Any]:
    """WRN-28-10 (or WRN-10-2) weights, Adam state after one step, and the replay buffer."""
    sys.path.insert(0, str(ROOT))
    from jemkit.build import build_model
    from jemkit.config import load_recipe
    from jemkit.contracts import BuildContext
    from jemkit.plugin_manager import load_plugins

    overrides = ["model.backbone.depth=10", "model.backbone.widen_factor=2"] if small else []
    cfg = load_recipe(ROOT / "recipes" / "jem_cifar10.yaml", overrides)
    context = BuildContext(device=torch.device("cpu"), input_shape=(3, 32, 32), num_classes=10, seed=0)
    model = build_model(load_plugins(entry_points=False), cfg, context)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    chains = 1_000 if small else 10_000
    generator = torch.Generator().manual_seed(0)
    buffer = torch.rand(chains, 3, 32, 32, generator=generator) * 2 - 1
    labels = torch.randint(0, 10, (chains,), generator=generator)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sampler": {"buffer": buffer, "labels": labels}}


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs


def measure(repeats: int, directory: Path, small: bool) -> dict[str, Any]:
    from jemkit import checkpoint, digest
    from jemkit.checkpoint import encode_tree, load_checkpoint, save_checkpoint

    torch.set_num_threads(1)
    load_before = load_average()
    state = build_state(small)
    tensors, skeleton = encode_tree(state)
    views = [t.reshape(-1).view(torch.uint8).numpy().data for t in tensors.values() if t.numel()]
    total = sum(len(v) for v in views)
    result: dict[str, Any] = {
        "bytes": total,
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in state["model"].values() if t.is_floating_point()),
        "buffer_bytes": state["sampler"]["buffer"].numel() * 4,
    }

    def by(name: str) -> Callable[[], Any]:
        if name == "crc32":
            return lambda: [zlib.crc32(v) for v in views]
        return lambda: [hashlib.new(name, v).digest() for v in views]

    hashes = {}
    for name in ("sha256", "sha1", "blake2b", "md5", "crc32"):
        seconds, runs = median_seconds(by(name), repeats)
        hashes[name] = {"seconds": round(seconds, 4), "gb_per_s": round(total / seconds / 1e9, 3), "runs": runs}
    result["hashes"] = hashes
    seconds, runs = median_seconds(lambda: digest.compute(tensors, skeleton, {}, threads=1), repeats)
    result["digest"] = {"seconds": round(seconds, 4), "gb_per_s": round(total / seconds / 1e9, 3), "runs": runs}
    threads = digest.default_threads()
    seconds, runs = median_seconds(lambda: digest.compute(tensors, skeleton, {}, threads=threads), repeats)
    result["digest_threads"] = {
        "threads": threads, "seconds": round(seconds, 4), "gb_per_s": round(total / seconds / 1e9, 3), "runs": runs
    }

    path = directory / "hash_cost.safetensors"
    seconds, runs = median_seconds(lambda: save_checkpoint(path, state, {"jemkit.recipe": "x"}), repeats)
    result["save"] = {"seconds": round(seconds, 4), "runs": runs}
    real = digest.compute
    checkpoint.digest.compute = lambda *args: "{}"  # type: ignore[assignment]
    try:
        plain, runs = median_seconds(lambda: save_checkpoint(path, state, {"jemkit.recipe": "x"}), repeats)
    finally:
        checkpoint.digest.compute = real  # type: ignore[assignment]
    result["save_without_digest"] = {"seconds": round(plain, 4), "runs": runs}
    save_checkpoint(path, state, {"jemkit.recipe": "x"})
    seconds, runs = median_seconds(lambda: load_checkpoint(path), repeats)
    result["load"] = {"seconds": round(seconds, 4), "runs": runs}
    loaded_tensors = encode_tree(load_checkpoint(path).state)[0]
    record = digest.compute(loaded_tensors, skeleton, {})
    verify, runs = median_seconds(lambda: digest.damaged_entries(record, loaded_tensors, skeleton, {}), repeats)
    result["verify"] = {"seconds": round(verify, 4), "runs": runs}
    path.unlink(missing_ok=True)
    result["digest_share_of_save"] = round(max(0.0, result["save"]["seconds"] - plain) / result["save"]["seconds"], 3)
    result["digest_share_estimate"] = round(result["digest"]["seconds"] / result["save"]["seconds"], 3)
    result["verify_share_of_load"] = round(verify / result["load"]["seconds"], 3)
    result["machine"] = {
        "cpu": cpu_description(),
        "openssl": ssl.OPENSSL_VERSION,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "directory": str(directory),
    }
    return result


def report(result: dict[str, Any]) -> str:
    gb = result["bytes"] / 1e9
    machine = result["machine"]
    lines = [
        f"payload: {result['bytes']:,} bytes ({gb:.3f} GB) in {result['tensors']} tensors; "
        f"{result['parameters']:,} parameters; buffer {result['buffer_bytes']:,} bytes",
        f"cpu: {machine['cpu']['model']} ({machine['cpu']['cores']} cores; flags: {' '.join(machine['cpu']['flags'])}); "
        f"{machine['openssl']}; one thread; load average {machine['load_average_before']} -> {machine['load_average_after']}",
        "",
        "hash       GB/s   seconds",
    ]
    for name, row in result["hashes"].items():
        lines.append(f"{name:<9} {row['gb_per_s']:>6.2f}  {row['seconds']:>8.3f}")
    lines += [
        f"{'digest':<9} {result['digest']['gb_per_s']:>6.2f}  {result['digest']['seconds']:>8.3f}   (jemkit.digest.compute: sha256 per tensor)",
        f"{'digest':<9} {result['digest_threads']['gb_per_s']:>6.2f}  {result['digest_threads']['seconds']:>8.3f}   "
        f"(the same on {result['digest_threads']['threads']} threads, as save_checkpoint hashes a payload this large)",
        "",
        f"save_checkpoint            {result['save']['seconds']:.3f} s",
        f"  without the digest       {result['save_without_digest']['seconds']:.3f} s",
        f"  digest share of a save   {result['digest_share_of_save']:.1%} (measured difference); "
        f"{result['digest_share_estimate']:.1%} (digest time / save time)",
        f"load_checkpoint (verifies) {result['load']['seconds']:.3f} s; verification {result['verify']['seconds']:.3f} s "
        f"({result['verify_share_of_load']:.1%})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the checkpoint is written (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--small", action="store_true", help="WRN-10-2 and 1,000 chains: a quick check")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        result = measure(args.repeats, Path(folder), args.small)
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
