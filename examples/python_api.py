# %% [markdown]
# # jemkit from Python
#
# Train a (tiny) JEM on the bundled 8x8 digits with `jemkit.train`, open it again with
# `jemkit.load_run` (no data set needed), score out-of-distribution inputs with `log_px` and draw
# class-conditional samples. Each `# %%` cell runs on its own in Jupyter or VS Code; as a script:
#
#     python examples/python_api.py [RUN_DIR]
#
# The run is tiny so that the whole script takes seconds on a CPU; drop the `TINY` overrides for
# the real recipe (a few minutes on 2 cores, test/acc about 0.98).

# %%
import sys
from pathlib import Path

from jemkit.entry import apply_env_defaults

apply_env_defaults()  # what the `jemkit` command does before torch loads: idle OpenMP threads sleep

import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import jemkit  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "jem_digits.yaml"
TINY = [  # a small network, 250 steps: test/acc about 0.75 in some 15 s on 2 CPU cores
    "model.backbone.channels=[16,32]",
    "model.backbone.feature_dim=32",
    "sampler.steps=5",
    "sampler.init.size=500",
    "optimizer.lr=1e-2",
    "schedule.warmup_steps=0",
    "train.epochs=6",
    "train.max_steps=250",
    "train.batch_size=32",
    "train.log_every=25",
    "train.samples_per_class=2",
    "train.sample_extra_steps=0",
]
OUT = sys.argv[1] if len(sys.argv) > 1 else None  # None: runs/jem_digits-<timestamp>

# %% [markdown]
# ## Train
# `jemkit.train` is `jemkit run`: the same run directory (config.yaml, metrics.jsonl,
# checkpoints/, samples/, tensorboard/). `resume=True` continues a stopped run.

# %%
run = jemkit.train(RECIPE, TINY, out=OUT, quiet=True)
print(f"trained {run.name} for {run.step} steps into {run.run_dir}: test/acc {run.summary['test/acc']:.3f}")
last = next(record for record in reversed(run.metrics) if "train/loss" in record)
print("last training record:", {k: v for k, v in last.items() if k.startswith("train/")})

# %% [markdown]
# ## Open the run
# The run recorded its input shape, classes and preprocessing, so opening it builds no data set.

# %%
run = jemkit.load_run(run.run_dir, checkpoint="last", device="cpu")
info = run.data_info
print(f"{run}: inputs {run.input_shape} in {list(info.value_range)}, classes {run.class_names}, noise_std {info.noise_std}")

# %% [markdown]
# ## Classify and score out-of-distribution inputs
# Digits scaled as the run's data set scales them (pixel intensities 0..16 to [-1, 1]) against
# uniform noise in [-1, 1]. `log_px` is log p(x) up to the model's unknown constant: higher means
# more like the training data.

# %%
digits = load_digits()
low, high = info.value_range
x = torch.tensor(digits.data[:200], dtype=torch.float32).reshape(-1, *run.input_shape) / 16.0 * (high - low) + low
y = torch.tensor(digits.target[:200])
noise = torch.empty_like(x).uniform_(low, high)

accuracy = (run.model.classify(x).argmax(1) == y).float().mean()
in_scores, out_scores = run.model.log_px(x), run.model.log_px(noise)
# AUROC: how often a digit scores higher than noise (0.5: no separation).
auroc = (in_scores[:, None] > out_scores[None, :]).float().mean()
print(f"accuracy on 200 digits {accuracy:.3f}")
print(f"log p(x) + const: digits {in_scores.mean():.3f}, uniform noise {out_scores.mean():.3f}, AUROC {auroc:.3f}")

# %% [markdown]
# ## Class-conditional samples
# `run.sample(n, y=k)` runs the run's own sampler on E(x, y=k); `init="buffer"` starts from the
# replay buffer, `init="noise"` from uniform noise. `seed` makes a draw reproducible.

# %%
samples = torch.cat([run.sample(4, y=k, steps=20, init="noise", seed=k) for k in range(run.num_classes)])
predicted = run.model.classify(samples).argmax(1)
wanted = torch.arange(run.num_classes).repeat_interleave(4)
print(f"samples {tuple(samples.shape)}; classified as the class asked for: {(predicted == wanted).float().mean():.2f}")

from torchvision.utils import save_image  # noqa: E402

grid = Path(run.run_dir) / "python_api_samples.png"
save_image((samples.clamp(-1, 1) + 1) / 2, grid, nrow=4)
print(f"wrote {grid}")
