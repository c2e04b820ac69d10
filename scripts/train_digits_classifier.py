"""Train the digits feature classifier whose weights ship with jemkit (digits-FID/IS/KID).

Trains ``DigitsNet`` exactly as ``jemkit_plugins.evaluation.feature_extractors`` does for the
default ``DigitsClassifierParams`` (seed 0, 20 epochs of Adam 2e-3, batch 64, input noise 0.03, on
the ``digits`` train split with the data set's default split: split_seed 1234, test_fraction 0.2),
single-threaded with deterministic algorithms, and writes the weights with their training record
as safetensors metadata. Usage, from the repository root:

    .venv/bin/python scripts/train_digits_classifier.py            # writes the shipped file, prints its sha256
    .venv/bin/python scripts/train_digits_classifier.py --check    # retrains and compares with the shipped file
    .venv/bin/python scripts/train_digits_classifier.py --out PATH # writes elsewhere

After a deliberate retraining (a new DIGITS_CLASSIFIER_VERSION), paste the printed sha256 into
SHIPPED_DIGITS_SHA256 in plugins/evaluation/feature_extractors.py. Floating-point results can
differ between torch versions and CPUs; that is why the weights are shipped instead of retrained.
The file the current version ships was written with the torch version recorded in its metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from jemkit_plugins.data.data_digits import DigitsParams
    from jemkit_plugins.evaluation import feature_extractors as fx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=fx.shipped_digits_weights(), help="weights file to write")
    parser.add_argument("--check", action="store_true", help="retrain and compare with --out instead of writing")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    params = fx.DigitsClassifierParams()
    net, accuracy = fx.train_digits_classifier(params)
    data = DigitsParams()
    info = {
        "version": fx.DIGITS_CLASSIFIER_VERSION,
        "test_accuracy": accuracy,
        "epochs": params.epochs,
        "seed": params.seed,
        "batch_size": params.batch_size,
        "lr": params.lr,
        "train_noise": fx.DIGITS_TRAIN_NOISE,
        "split_seed": data.split_seed,
        "test_fraction": data.test_fraction,
        "torch": torch.__version__.split("+")[0],
        "script": "scripts/train_digits_classifier.py",
    }
    if args.check:
        shipped = load_file(str(args.out))
        with safe_open(str(args.out), framework="pt") as handle:
            recorded = json.loads(handle.metadata()[fx.DIGITS_METADATA_KEY])
        worst = max(float((shipped[k] - v).abs().max()) for k, v in net.state_dict().items())
        print(f"retrained: test accuracy {accuracy:.6f} (shipped {recorded['test_accuracy']:.6f}, torch "
              f"{recorded['torch']}); largest weight difference {worst:.3g}")
        return 0 if worst == 0.0 else 1
    fx._save_atomic(net, args.out, {fx.DIGITS_METADATA_KEY: json.dumps(info, sort_keys=True)})
    os.chmod(args.out, 0o644)  # an ordinary package file, not the private temp file's mode
    print(f"wrote {args.out}: test accuracy {accuracy:.6f}, sha256 {fx.file_sha256(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
