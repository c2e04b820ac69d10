"""What a bug report needs, gathered in one place (``jemkit doctor``).

:func:`collect` returns plain JSON-ready data: jemkit, Python, torch and torchvision versions;
CUDA and its devices; the CPU model, its bfloat16 instructions and the thread settings; every
plugin package with its version, components and commands; every plugin failure with its reason;
the data roots the installed data sets read by default; and the cache folders. Nothing here
changes state or downloads anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jemkit import __version__
from jemkit.plugin_manager import PluginSet, load_plugins, register_commands

#: Environment variables that decide how many threads torch and OpenMP use, and how idle ones wait.
THREAD_ENV: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
#: CPU flags (``/proc/cpuinfo``) that matter for bfloat16 and vectorised kernels.
CPU_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "fma")
#: Kinds whose ``root`` parameter names a data folder.
DATA_KINDS: tuple[str, ...] = ("data", "ood")
#: Stop measuring a cache folder after this many files (the size is then a lower bound).
MAX_FILES_MEASURED = 20_000


def collect(plugins: PluginSet | None = None, subparsers: Any = None) -> dict[str, Any]:
    """Every section of the report (see the module docstring); ``plugins`` defaults to a fresh
    load. Plugin commands are added to ``subparsers`` (the command line's, so that clashes with
    built-in commands show; default an empty one)."""
    plugins = plugins or load_plugins()
    packages = plugin_facts(plugins, subparsers)  # first: failures to add commands join plugins.failures
    return {
        "jemkit": {"version": __version__, "location": str(Path(__file__).resolve().parent)},
        "python": {"version": platform.python_version(), "executable": sys.executable, "platform": platform.platform()},
        **torch_facts(),
        "cpu": cpu_facts(),
        "threads": thread_facts(),
        "plugins": packages,
        "plugin_failures": [
            {"plugin": f.plugin, "origin": f.origin, "stage": f.stage, "error": f.error} for f in plugins.failures
        ],
        "data_roots": data_roots(plugins),
        "caches": caches(),
    }


def torch_facts() -> dict[str, Any]:
    """``torch`` (version, CUDA and cuDNN it was built with, torchvision) and ``cuda`` (devices)."""
    import torch

    try:
        import torchvision

        vision: str | None = torchvision.__version__
    except Exception as exc:  # a broken torchvision is itself worth reporting
        vision = f"unavailable ({type(exc).__name__}: {exc})"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    devices = []
    available = torch.cuda.is_available()
    if available:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 2),
                "bf16": bool(torch.cuda.is_bf16_supported()) if index == torch.cuda.current_device() else None,
            })
    mps = getattr(torch.backends, "mps", None)
    return {
        "torch": {
            "version": torch.__version__,
            "torchvision": vision,
            "cuda_build": torch.version.cuda,
            "cudnn": cudnn,
            "debug": bool(torch.version.debug),
        },
        "cuda": {
            "available": available,
            "device_count": len(devices),
            "devices": devices,
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "mps_available": bool(mps is not None and mps.is_available()),
        },
    }


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The CPU model name and flags from ``/proc/cpuinfo`` (Linux); ``(None, set())`` elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_facts() -> dict[str, Any]:
    """CPU model, cores (all, and usable by this process), torch's kernel level and bf16 flags."""
    import torch

    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    capability = None
    get_capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if callable(get_capability):
        capability = get_capability()
    return {
        "model": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_capability": capability,
        "flags": {flag: flag in flags for flag in CPU_FLAGS} if flags else {},
        "bf16_instructions": bool(flags & {"avx512_bf16", "amx_bf16"}),
    }


def thread_facts() -> dict[str, Any]:
    """torch's intra- and inter-op thread counts and the thread environment variables (``None``: unset)."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "env": {name: os.environ.get(name) for name in THREAD_ENV},
    }


def plugin_facts(plugins: PluginSet, subparsers: Any = None) -> list[dict[str, Any]]:
    """One entry per package that ships plugins: package, version, its plugins and their
    components (``kind``, ``name``, ``plugin``) and the subcommands they add to ``subparsers``."""
    if subparsers is None:
        subparsers = argparse.ArgumentParser(prog="jemkit").add_subparsers()
    commands = register_commands(plugins, subparsers)
    by_package: dict[tuple[str, str], dict[str, Any]] = {}
    for plugin, origin in plugins.origins.items():
        package, version = plugins.distributions.get(plugin, (origin, ""))
        entry = by_package.setdefault(
            (package, version), {"package": package, "version": version, "plugins": [], "components": [], "commands": []}
        )
        entry["plugins"].append(plugin)
        entry["commands"].extend(commands.get(plugin, []))
    for component in plugins.registries.components():
        package = plugins.distributions.get(component.plugin, (plugins.origins.get(component.plugin, "?"), ""))
        if package in by_package:
            by_package[package]["components"].append(
                {"kind": component.kind, "name": component.name, "plugin": component.plugin}
            )
    return list(by_package.values())


def _default_root(params: type | None) -> str | None:
    if params is None or not dataclasses.is_dataclass(params):
        return None
    for f in dataclasses.fields(params):
        if f.name == "root" and isinstance(f.default, str) and f.default.strip():
            return f.default
    return None


def _entries(path: Path, limit: int = 20) -> list[str]:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError:
        return []
    return names[:limit] + ([f"... {len(names) - limit} more"] if len(names) > limit else [])


def data_roots(plugins: PluginSet, cwd: Path | None = None) -> list[dict[str, Any]]:
    """The default ``root`` folders of the data and OOD sets (relative to ``cwd``): whether each
    exists, what it holds, and which components read it."""
    cwd = cwd or Path.cwd()
    roots: dict[Path, list[str]] = {}
    for kind in DATA_KINDS:
        for component in plugins.registries[kind]:
            default = _default_root(component.params)
            if default is not None:
                roots.setdefault((cwd / Path(default).expanduser()).resolve(), []).append(f"{kind} {component.name}")
    return [
        {"path": str(path), "exists": path.is_dir(), "entries": _entries(path), "used_by": used_by}
        for path, used_by in roots.items()
    ]


def _size(path: Path) -> tuple[int, int, bool]:
    """Total bytes and files under ``path`` (stopping at :data:`MAX_FILES_MEASURED`), and whether it stopped."""
    total = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += (Path(folder) / name).stat().st_size
            except OSError:
                continue
            files += 1
            if files >= MAX_FILES_MEASURED:
                return total, files, True
    return total, files, False


def cache_folders() -> dict[str, Path]:
    """jemkit's cache (``$JEMKIT_CACHE``, default ``~/.cache/jemkit``) and torch's hub folder."""
    import torch

    return {
        "jemkit": Path(os.environ.get("JEMKIT_CACHE") or "~/.cache/jemkit").expanduser(),
        "torch_hub": Path(torch.hub.get_dir()).expanduser(),
    }


def caches(folders: dict[str, Path] | None = None) -> list[dict[str, Any]]:
    """Each cache folder: path, whether it exists, its size in bytes and number of files."""
    rows = []
    for name, path in (folders or cache_folders()).items():
        exists = path.is_dir()
        size, files, partial = _size(path) if exists else (0, 0, False)
        rows.append({"name": name, "path": str(path), "exists": exists, "bytes": size, "files": files, "partial": partial})
    return rows


def flatten(report: dict[str, Any], keys: Iterable[str] = ("jemkit", "python", "torch", "cuda", "cpu", "threads")) -> list[tuple[str, str]]:
    """``(section.key, value)`` rows of the scalar facts of ``keys`` (for a two-column table)."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for index, inner in enumerate(value):
                walk(f"{prefix}[{index}]", inner)
        else:
            rows.append((prefix, "unset" if value is None else str(value)))

    for key in keys:
        walk(key, report.get(key))
    return rows
