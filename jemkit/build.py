"""The one place where a recipe becomes objects.

Each component receives its own validated parameters and an explicit
:class:`~jemkit.contracts.BuildContext`, never the whole recipe.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from jemkit import defaults
from jemkit.config import (
    DEFAULT_SAMPLER,
    SamplerParams,
    TrainParams,
    build_params,
    check_loggers,
    component_params,
    section,
)
from jemkit.contracts import (
    Backbone,
    BuildContext,
    ChainInit,
    DataSplits,
    EnergyHead,
    JointEnergyModel,
    Loss,
    Transition,
    parameters_requiring_grad,
)
from jemkit.culprit import blame, component_culprit
from jemkit.errors import JemkitError, RecipeError
from jemkit.disk import free_bytes
from jemkit.distributed import DistInfo
from jemkit.guard import GuardParams
from jemkit.performance import PerformanceParams, prepare_model
from jemkit.plugin_manager import PluginSet, logger_names
from jemkit.rng import RANK_SEED_STRIDE, recipe_seed, seed_everything
from jemkit.sampler import Sampler, graph_capturable


@dataclass
class Experiment:
    """Everything a run needs, built from one recipe."""

    cfg: DictConfig
    context: BuildContext
    data: DataSplits
    model: JointEnergyModel
    sampler: Sampler
    loss: Loss
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    train: TrainParams
    guard: GuardParams
    performance: PerformanceParams


def resolve_device(spec: str | None) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a device
    this machine does not have is a :class:`RecipeError`."""
    if spec is not None and not isinstance(spec, str):
        raise RecipeError(f"device must be a name (auto, cpu, cuda or cuda:N), got {spec!r}.")
    spec = (spec or "auto").strip()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise RecipeError(f"device {spec!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(
            f"The recipe asks for device {spec!r}, but no CUDA device is available. Set device=auto or device=cpu."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise RecipeError(
            f"The recipe asks for device {spec!r}, but this machine has {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1}). Set device=cuda:0, device=auto or device=cpu."
        )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RecipeError(
                f"The recipe asks for device {spec!r} (Apple's Metal GPUs), but it is not available here (this PyTorch "
                "has no MPS support, or the machine is not a Mac with Metal). Set device=auto or device=cpu."
            )
    elif device.type not in ("cpu", "cuda"):
        raise RecipeError(
            f"The recipe asks for device {spec!r}, but jemkit trains on cpu, cuda, cuda:N or mps. "
            "Set device=auto, device=cpu or device=cuda."
        )
    return device


#: Bytes a replay-buffer chain costs besides its float32 values: its int64 label.
CHAIN_LABEL_BYTES = 8


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``; ``None`` when unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_chain_memory(
    cfg: DictConfig, context: BuildContext, train: TrainParams, dist: DistInfo, source: str = "recipe"
) -> None:
    """Refuse a replay buffer (``sampler.init.size`` chains of ``context.input_shape``) that cannot fit,
    before it is allocated: in memory (every local rank's buffer plus one checkpoint's copy; GPU
    memory for ``on_device``) and on the disk of the run directory (``train.keep_checkpoints`` step
    checkpoints, ``best.safetensors`` and one being written, each holding every rank's buffer)."""
    size = OmegaConf.select(cfg, "sampler.init.size", default=None)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or not context.input_shape:
        return
    per_chain = 4 * math.prod(int(n) for n in context.input_shape) + CHAIN_LABEL_BYTES
    buffer = size * per_chain
    ranks = dist.world_size
    fits = "at most {fit:,} chains fit"
    shape = "x".join(str(n) for n in context.input_shape)
    what = f"sampler.init.size={size} asks for a replay buffer of {buffer:,} bytes ({size:,} chains of {shape} float32 plus a label)"
    on_device = bool(OmegaConf.select(cfg, "sampler.init.on_device", default=False)) and context.device.type == "cuda"
    if on_device:
        free_gpu, _ = torch.cuda.mem_get_info(context.device)
        if buffer > free_gpu:
            raise RecipeError(
                f"{source}: {what} on {context.device}, which has {free_gpu:,} bytes free; "
                f"{fits.format(fit=free_gpu // per_chain)}. Lower sampler.init.size or set sampler.init.on_device=false."
            )
    memory = _available_memory()
    need = buffer * ranks * (1 if on_device else 2)
    if memory is not None and need > memory:
        raise RecipeError(
            f"{source}: {what}; with one checkpoint's copy of it{' on each of ' + str(ranks) + ' ranks' if ranks > 1 else ''} "
            f"this process needs about {need:,} bytes of memory, but {memory:,} bytes are available; "
            f"{fits.format(fit=memory // (per_chain * ranks * (1 if on_device else 2)))}. Lower sampler.init.size "
            "or use a machine with more memory."
        )
    if context.run_dir is None:
        return
    copies = train.keep_checkpoints + 2
    disk_need = buffer * ranks * copies
    free = free_bytes(context.run_dir)
    if free is not None and disk_need > free:
        raise RecipeError(
            f"{source}: {what}; every checkpoint holds it, and train.keep_checkpoints={train.keep_checkpoints} step "
            f"checkpoints plus best.safetensors plus one being written need about {disk_need:,} bytes on the disk of "
            f"{str(context.run_dir)!r}, which has {free:,} bytes free; {fits.format(fit=free // (per_chain * ranks * copies))}. "
            "Lower sampler.init.size or train.keep_checkpoints, free space, or pass --out on another disk."
        )


def _call(kind: str, name: str, dotted: str, factory: Any, *args: Any) -> Any:
    try:
        return factory(*args)
    except JemkitError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise RecipeError(f"Could not build {kind} {name!r} from recipe section {dotted!r}: {exc}.") from None


def build_component(
    plugins: PluginSet, kind: str, cfg: DictConfig, dotted: str, context: BuildContext, *extra: Any, source: str = "recipe"
) -> Any:
    """Validate the section at ``dotted`` and call the registered factory of its ``name``."""
    node = section(cfg, dotted, source)
    registry = plugins.registries[kind]
    name, params = component_params(registry, node, dotted, source)
    # an exception inside the factory names the component, its plugin and package (jemkit.culprit)
    with blame(lambda: component_culprit(plugins, kind, name, dotted, source), "while its factory built it"):
        return _call(kind, name, dotted, registry.get(name).factory, params, context, *extra)


def build_by_name(
    plugins: PluginSet, kind: str, name: str, context: BuildContext, *extra: Any, source: str = "defaults"
) -> Any:
    """The registered ``kind`` component ``name`` built with its default parameters (a default of
    :mod:`jemkit.defaults`, or a recipe section given only by name)."""
    return build_component(plugins, kind, OmegaConf.create({kind: {"name": name}}), kind, context, *extra, source=source)


def build_data(plugins: PluginSet, cfg: DictConfig, context: BuildContext, source: str = "recipe") -> DataSplits:
    """The recipe's data set; fills ``context.input_shape`` and ``context.num_classes``."""
    data = build_component(plugins, "data", cfg, "data", context, source=source)
    if not isinstance(data, DataSplits):
        raise RecipeError(f"The data component {cfg.data.name!r} returned {type(data).__name__}, not DataSplits.")
    context.input_shape = tuple(data.input_shape)
    context.num_classes = data.num_classes
    context.train_data = data.train_plain or data.train
    context.test_data = data.test
    return data


def build_model(plugins: PluginSet, cfg: DictConfig, context: BuildContext, source: str = "recipe") -> JointEnergyModel:
    """Backbone plus energy head; fills ``context.feature_dim``."""
    backbone = build_component(plugins, "backbone", cfg, "model.backbone", context, source=source)
    if not isinstance(backbone, Backbone):
        raise RecipeError(f"Backbone {cfg.model.backbone.name!r} is not a jemkit.contracts.Backbone.")
    context.feature_dim = backbone.feature_dim
    head = build_component(plugins, "head", cfg, "model.head", context, source=source)
    if not isinstance(head, EnergyHead):
        raise RecipeError(f"Head {cfg.model.head.name!r} is not a jemkit.contracts.EnergyHead.")
    return JointEnergyModel(backbone, head).to(context.device)


def build_sampler(plugins: PluginSet, cfg: DictConfig, context: BuildContext, source: str = "recipe") -> Sampler:
    """Chain initialiser plus transition, with the kernel's sampler settings and the recipe's
    ``performance.cuda_graphs``."""
    node = cfg.get("sampler")
    if node is None:
        node = OmegaConf.create(DEFAULT_SAMPLER)
    if not isinstance(node, DictConfig):
        raise RecipeError(f"{source}: 'sampler' must be a mapping with init and transition, got {node!r}.")
    wrapper = OmegaConf.create({"sampler": node})
    for key, default in (("init", DEFAULT_SAMPLER["init"]), ("transition", DEFAULT_SAMPLER["transition"])):
        if key not in wrapper.sampler:
            wrapper.sampler[key] = default
    kernel = {k: v for k, v in wrapper.sampler.items() if k not in ("init", "transition")}
    settings: SamplerParams = build_params(SamplerParams, kernel, "sampler", source, what="the sampler")
    init = build_component(plugins, "chain_init", wrapper, "sampler.init", context, source=source)
    transition = build_component(plugins, "transition", wrapper, "sampler.transition", context, source=source)
    if not isinstance(init, ChainInit) or not isinstance(transition, Transition):
        raise RecipeError("sampler.init must build a ChainInit and sampler.transition a Transition.")
    sampler = Sampler(init, transition, settings.steps, settings.model_mode, settings.freeze_weights)
    if build_performance(cfg, source).cuda_graphs:
        enable_cuda_graphs(sampler, cfg, source, plugins=plugins, context=context)
    return sampler


def registered_transitions(
    plugins: PluginSet, context: BuildContext, has: Callable[[Transition], bool]
) -> list[str]:
    """Names of the registered transitions that, built with their default parameters in ``context``,
    satisfy ``has`` (e.g. :func:`~jemkit.sampler.graph_capturable`), sorted. For error messages:
    a transition that cannot be built from its defaults alone is left out."""
    names = []
    for component in plugins.registries["transition"]:
        try:
            params = build_params(component.params, {}, f"transition.{component.name}", "defaults")
            transition = component.factory(params, context)
        except Exception:  # any failure of a plugin's factory only means "not listed"
            continue
        if isinstance(transition, Transition) and has(transition):
            names.append(component.name)
    return names


def build_performance(cfg: DictConfig, source: str = "recipe") -> PerformanceParams:
    """The recipe's ``performance:`` section, validated (every lever off when absent)."""
    return build_params(
        PerformanceParams, cfg.get("performance") or {}, "performance", source, what="the performance levers"
    )


def enable_cuda_graphs(
    sampler: Sampler,
    cfg: DictConfig,
    source: str = "recipe",
    *,
    plugins: PluginSet | None = None,
    context: BuildContext | None = None,
) -> None:
    """Switch on ``performance.cuda_graphs`` for ``sampler``; its transition must be graph-safe.

    With ``plugins`` the error for a transition that is not names the registered ones that are."""
    transition = sampler.transition
    if not graph_capturable(transition):
        name = OmegaConf.select(cfg, "sampler.transition.name", default=defaults.TRANSITION)
        safe = registered_transitions(plugins, context or BuildContext(), graph_capturable) if plugins else []
        use = f"Use {_one_of(safe)}" if safe else "Use a transition that declares graph_safe = True"
        raise RecipeError(
            f"{source}: performance.cuda_graphs needs a transition whose step launches the same kernels "
            f"every call, and {name!r} ({type(transition).__name__}) does not declare graph_safe = True. "
            f"{use}, or set performance.cuda_graphs=false."
        )
    sampler.cuda_graphs = True


def _one_of(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def build_train_params(cfg: DictConfig, source: str = "recipe") -> TrainParams:
    """The ``train:`` section as :class:`TrainParams` (defaults where absent)."""
    raw = cfg.get("train") or {}
    return build_params(TrainParams, raw, "train", source, what="the training loop")


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Iterations per epoch with ``drop_last`` batching (at least one)."""
    return max(1, num_train // batch_size)


def build_experiment(
    plugins: PluginSet,
    cfg: DictConfig,
    run_dir: Path | None = None,
    source: str = "recipe",
    dist: DistInfo | None = None,
) -> Experiment:
    """Build every component of ``cfg``, seeding the RNGs first so builds are reproducible.

    ``source`` names the recipe in error messages (its file path). Under ``torchrun`` (``dist``
    with several ranks) every rank builds the same model; from the sampler on, each rank draws
    from its own RNG stream (seed + rank offset), so replay-buffer shards differ.
    """
    dist = dist or DistInfo()
    seed = recipe_seed(cfg, source)
    train = build_train_params(cfg, source)
    guard = build_params(GuardParams, cfg.get("guard") or {}, "guard", source, what="the divergence guard")
    performance = build_performance(cfg, source)
    check_loggers(cfg, logger_names(plugins), source)  # `loggers: [...]` names installed logger plugins
    if train.batch_size % dist.world_size:
        raise RecipeError(
            f"{source}: train.batch_size={train.batch_size} (the global batch) does not split evenly over "
            f"{dist.world_size} processes; choose a multiple of {dist.world_size}."
        )
    device = resolve_device(cfg.get("device", defaults.DEVICE))
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    seed_everything(seed)
    context = BuildContext(device=device, run_dir=run_dir, seed=seed)
    data = build_data(plugins, cfg, context, source)
    if len(data.train) < train.batch_size:
        raise RecipeError(
            f"{source}: train.batch_size={train.batch_size} is larger than the training split "
            f"({len(data.train)} examples); lower train.batch_size."
        )
    context.steps_per_epoch = steps_per_epoch(len(data.train), train.batch_size)
    context.total_steps = train.max_steps or context.steps_per_epoch * train.epochs
    model = prepare_model(build_model(plugins, cfg, context, source), performance)
    check_chain_memory(cfg, context, train, dist, source)  # before the replay buffer is allocated
    if dist.rank:
        seed_everything(seed + RANK_SEED_STRIDE * dist.rank)
    sampler = build_sampler(plugins, cfg, context, source)  # applies performance.cuda_graphs
    loss = build_component(plugins, "loss", cfg, "loss", context, source=source)
    optimizer = build_component(
        plugins, "optimizer", cfg, "optimizer", context, parameters_requiring_grad(model), source=source
    )
    if cfg.get("schedule") is not None:
        schedule = build_component(plugins, "schedule", cfg, "schedule", context, optimizer, source=source)
    else:
        schedule = build_by_name(plugins, "schedule", defaults.SCHEDULE, context, optimizer, source=source)
    return Experiment(cfg, context, data, model, sampler, loss, optimizer, schedule, train, guard, performance)
