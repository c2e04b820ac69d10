"""Errors that name the culprit: an exception raised inside a plugin's code becomes one paragraph.

During a run the kernel calls plugin code in a few places: component factories (:mod:`jemkit.build`),
the loss (and through it the sampler's chain initialiser and transition, the backbone and the
head), the optimiser and schedule, and every hook. Each call is wrapped in :func:`blame`: an
exception that is not already a :class:`~jemkit.errors.JemkitError` is re-raised as a
:class:`PluginCodeError` whose message names the component, its kind, the plugin, the package and
version that ship it and the recipe key path, followed (on the command line) by the plugin's own
frames of the traceback; ``jemkit --debug`` prints the whole traceback instead.

Inside a call the innermost frame whose ``self`` is a known component decides who is blamed
(:class:`ComponentIndex`), so an error in a transition's ``step`` reached through the loss names
the transition, and one in the backbone's ``forward`` names the backbone.

Non-finite chains are named too (:func:`describe_nonfinite_chains`): the sampler records, at the
end of each K-step loop and without waiting for the device, the first step whose output was not
finite; the trainer reads it only when the divergence guard trips.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from jemkit.errors import JemkitError
from jemkit.guard import DivergenceTrip
from jemkit.registry import UnknownComponentError, with_install_hint

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from jemkit.build import Experiment
    from jemkit.plugin_manager import PluginSet

T = TypeVar("T")

#: Exceptions passed on unchanged: user-facing errors, the guard's trips, iteration control and
#: running out of memory (which is no plugin's bug, and which callers may want to catch as such).
PASS_THROUGH: tuple[type[BaseException], ...] = (
    JemkitError, DivergenceTrip, StopIteration, MemoryError, torch.cuda.OutOfMemoryError,
)

#: Recipe key of each kind's component, where a recipe has one section per kind.
COMPONENT_KEYS: dict[str, str] = {
    "data": "data",
    "backbone": "model.backbone",
    "head": "model.head",
    "chain_init": "sampler.init",
    "transition": "sampler.transition",
    "loss": "loss",
    "optimizer": "optimizer",
    "schedule": "schedule",
}


@dataclass(frozen=True)
class Culprit:
    """Who ran the code that raised: a component (or a plugin's hook) and where it came from."""

    #: ``transition``, ``loss``, ... or ``hook``.
    kind: str
    #: The component's registered name, or the hook's name.
    name: str
    #: The plugin that registered the component or implements the hook (``?`` when unknown).
    plugin: str
    #: Distribution that ships the plugin and its version (``None`` for in-process plugins).
    package: str | None = None
    version: str | None = None
    #: Recipe key path of the component's section (``sampler.transition``), if it has one.
    key: str | None = None
    #: The recipe file (or ``RUN_DIR/config.yaml``) the key is in.
    source: str | None = None
    #: Source files (or package directories) of the plugin: its frames are those in these.
    files: tuple[str, ...] = ()

    def origin(self) -> str:
        """``plugin 'x' from jemkit-x 0.2.0``, ``plugin 'x', built into jemkit 0.1.0`` or ``plugin 'x'``."""
        if self.package == "jemkit":
            return f"plugin {self.plugin!r}, built into jemkit {self.version}"
        if self.package:
            return f"plugin {self.plugin!r} from package {self.package} {self.version}"
        return f"plugin {self.plugin!r}"

    def describe(self) -> str:
        """``transition 'sgld' (plugin 'sampling', built into jemkit 0.1.0; recipe key sampler.transition in r.yaml)``."""
        what = f"hook {self.name}" if self.kind == "hook" else f"{self.kind} {self.name!r}"
        where = ""
        if self.key:
            known_file = self.source and self.source not in ("recipe", "defaults")  # placeholders, not files
            where = f"; recipe key {self.key}" + (f" in {self.source}" if known_file else "")
        return f"{what} ({self.origin()}{where})"


class PluginCodeError(JemkitError):
    """An exception raised inside a plugin's code; ``str()`` is the one-paragraph explanation.

    :attr:`culprit` names who raised, :attr:`error` is the original exception (also the
    ``__cause__``), and :meth:`traceback_text` gives the plugin's frames or the whole traceback.
    """

    def __init__(self, culprit: Culprit, error: BaseException, during: str = "") -> None:
        self.culprit = culprit
        self.error = error
        self.during = during
        super().__init__(self._paragraph())

    def _paragraph(self) -> str:
        c = self.culprit
        detail = " ".join(str(self.error).split())
        if len(detail) > 400:
            detail = detail[:397] + "..."
        raised = f"{type(self.error).__name__}: {detail}" if detail else type(self.error).__name__
        during = f" {self.during}" if self.during else ""
        if c.package == "jemkit":
            blame_line = "This is a bug in a plugin that ships with jemkit (or a value it failed to check): report it to jemkit's maintainers"
        elif c.package:
            blame_line = (
                f"This is an error in that plugin's code (or a value it failed to check), not in jemkit: report it to "
                f"the authors of {c.package}"
            )
        else:
            blame_line = f"This is an error in the code of plugin {c.plugin!r} (or a value it failed to check): fix it"
        instead = f", or choose another {c.kind} at {c.key}.name" if c.key and c.kind != "hook" else ""
        return (
            f"The {c.describe()} raised {raised}{during}. {blame_line} with the plugin's frames below "
            f"(`jemkit --debug ...` prints the whole traceback){instead}."
        )

    def plugin_frames(self) -> list[traceback.FrameSummary]:
        """The frames of the traceback in the plugin's own files (the last three frames when none are)."""
        frames = traceback.extract_tb(self.error.__traceback__)
        own = [f for f in frames if _in_files(f.filename, self.culprit.files)]
        return own or list(frames[-3:])

    def traceback_text(self, full: bool = False) -> str:
        """The plugin's frames (``full``: the whole traceback) and the exception line."""
        if full:
            return "".join(traceback.format_exception(self.error)).rstrip()
        lines = traceback.format_list(self.plugin_frames())
        last = traceback.format_exception_only(type(self.error), self.error)
        return ("Traceback (the plugin's frames, most recent call last):\n" + "".join(lines) + "".join(last)).rstrip()


def _in_files(filename: str, files: Iterable[str]) -> bool:
    path = os.path.abspath(filename)
    for entry in files:
        if path == entry or path.startswith(entry.rstrip(os.sep) + os.sep):
            return True
    return False


# --------------------------------------------------------------------------- who is who


def _source_file(obj: Any) -> str | None:
    """The source file of a module, function, class or (the class of) an object."""
    if inspect.ismodule(obj):
        path = getattr(obj, "__file__", None)
        if path and os.path.basename(path) == "__init__.py":
            return os.path.dirname(os.path.abspath(path))  # a package: every file under it
        return os.path.abspath(path) if path else None
    code = getattr(obj, "__code__", None) or getattr(getattr(obj, "__func__", None), "__code__", None)
    if code is not None:
        return os.path.abspath(code.co_filename)
    target = obj if inspect.isclass(obj) else type(obj)
    try:
        path = inspect.getsourcefile(target)
    except TypeError:  # built-in classes
        return None
    return os.path.abspath(path) if path else None


#: The kernel's own folder and torch's: frames there are never a plugin's own.
_NOT_PLUGIN_CODE = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))


def _plugin_code(path: str | None) -> bool:
    return bool(path) and not _in_files(path, _NOT_PLUGIN_CODE)


def plugin_files(plugins: PluginSet, plugin: str, *objects: Any) -> tuple[str, ...]:
    """Source files of ``plugin``: its module (or package directory), the functions of an object
    plugin, and the files of ``objects`` (a factory, a component)."""
    files: list[str] = []
    registered = plugins.manager.get_plugin(plugin) if plugins.manager.has_plugin(plugin) else None
    candidates: list[Any] = [registered, *objects]
    if registered is not None and not inspect.ismodule(registered):
        candidates += [getattr(registered, n, None) for n in dir(registered) if n.startswith("jemkit_")]
    for obj in candidates:
        if obj is None:
            continue
        path = _source_file(obj)
        if _plugin_code(path) and path not in files:
            files.append(path)
    return tuple(files)


def _distribution(plugins: PluginSet, plugin: str) -> tuple[str | None, str | None]:
    package, version = plugins.distributions.get(plugin, (None, None))
    return package, version


def component_culprit(
    plugins: PluginSet, kind: str, name: str, key: str | None = None, source: str | None = None, *objects: Any
) -> Culprit:
    """The culprit record of the registered ``kind`` component ``name`` (``key``: its recipe path)."""
    registry = plugins.registries[kind]
    component = registry.get(name) if name in registry else None
    plugin = component.plugin if component is not None else "?"
    factory = component.factory if component is not None else None
    package, version = _distribution(plugins, plugin)
    return Culprit(kind, name, plugin, package, version, key, source, plugin_files(plugins, plugin, factory, *objects))


def hook_culprit(plugins: PluginSet, plugin: str, hook: str, cfg: DictConfig | None = None, source: str | None = None) -> Culprit:
    """The culprit record of ``plugin``'s implementation of ``hook``; the recipe key is the plugin's
    own top-level section when the recipe has one named like the plugin (``ema:``)."""
    package, version = _distribution(plugins, plugin)
    key = plugin if cfg is not None and plugin in cfg else None
    return Culprit("hook", hook, plugin, package, version, key, source if key else None, plugin_files(plugins, plugin))


class ComponentIndex:
    """The components of one experiment, found by identity in a traceback's frames."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, Culprit]] = {}
        self.by_kind: dict[str, Culprit] = {}

    def add(self, obj: Any, culprit: Culprit) -> None:
        """Blame ``culprit`` for frames whose ``self`` is ``obj``."""
        file = _source_file(obj)
        if _plugin_code(file) and file not in culprit.files:
            culprit = replace(culprit, files=(*culprit.files, file))
        self._by_id[id(obj)] = (obj, culprit)  # the object is kept, so its id stays its own
        self.by_kind.setdefault(culprit.kind, culprit)

    def innermost(self, tb: Any) -> Culprit | None:
        """The culprit of the innermost frame of traceback ``tb`` that runs a known component's method."""
        found = None
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            entry = self._by_id.get(id(owner)) if owner is not None else None
            if entry is not None and entry[0] is owner:
                found = entry[1]
            tb = tb.tb_next
        return found

    @classmethod
    def of_experiment(cls, plugins: PluginSet, experiment: Experiment, source: str | None = None) -> ComponentIndex:
        """Index the data set, backbone, head, chain initialiser, transition, loss, optimiser and
        schedule of ``experiment`` (names read from its recipe, defaults where it has no section)."""
        from jemkit import defaults
        from omegaconf import OmegaConf

        e, cfg = experiment, experiment.cfg
        fallback = {
            "chain_init": defaults.CHAIN_INIT,
            "transition": defaults.TRANSITION,
            "schedule": defaults.SCHEDULE,
        }
        objects = {
            "data": e.data,
            "backbone": e.model.backbone,
            "head": e.model.head,
            "chain_init": e.sampler.init,
            "transition": e.sampler.transition,
            "loss": e.loss,
            "optimizer": e.optimizer,
            "schedule": e.schedule,
        }
        index = cls()
        for kind, obj in objects.items():
            key = COMPONENT_KEYS[kind]
            name = OmegaConf.select(cfg, f"{key}.name", default=None) or fallback.get(kind, "?")
            present = OmegaConf.select(cfg, key, default=None) is not None
            index.add(obj, component_culprit(plugins, kind, str(name), key if present else None, source if present else None))
        return index


@contextlib.contextmanager
def blame(
    default: Culprit | Callable[[], Culprit] | None, during: str = "", index: ComponentIndex | None = None
) -> Iterator[None]:
    """Re-raise an exception from the block as a :class:`PluginCodeError` naming its culprit.

    The culprit is the innermost component of ``index`` in the traceback, else ``default`` (a
    :class:`Culprit`, or a function making one, called only after an exception); with neither the
    exception passes unchanged, as do :data:`PASS_THROUGH` exceptions (a
    :class:`~jemkit.errors.JemkitError` a plugin raises on purpose keeps its own message).
    """
    try:
        yield
    except PASS_THROUGH:
        raise
    except Exception as exc:
        culprit = index.innermost(exc.__traceback__) if index is not None else None
        if culprit is None:
            culprit = default() if callable(default) else default
        if culprit is None:
            raise
        raise PluginCodeError(culprit, exc, during) from exc


# --------------------------------------------------------------------------- non-finite chains


def describe_nonfinite_chains(sampler: Any, index: ComponentIndex | None = None) -> str | None:
    """Which part of the latest sampling call produced non-finite values, or ``None`` if none did.

    Reads ``sampler.last_nonfinite_step`` (one small device read; call it only when something
    already went wrong): ``-1`` all finite, ``0`` the starting chains or their energies were not
    finite, ``k`` the output of transition step ``k`` was not (chains, energies or gradient norms).
    """
    flag = getattr(sampler, "last_nonfinite_step", None)
    if flag is None:
        return None
    step = int(flag)
    if step < 0:
        return None
    kinds = index.by_kind if index is not None else {}
    steps = getattr(sampler, "last_steps", None) or getattr(sampler, "steps", "?")
    if step == 0:
        init = kinds.get("chain_init")
        who = f"the {init.describe()}" if init else "the chain initialiser"
        return (
            f"the sampler's chains or their energies were not finite before the first transition step: "
            f"{who} started them there, or the model's energy is not finite at its starting points"
        )
    transition = kinds.get("transition")
    who = f"the {transition.describe()}" if transition else "the sampler's transition"
    return f"{who} returned non-finite chains, energies or gradient norms at step {step} of {steps}"


# --------------------------------------------------------------------------- uninstalled plugins


def recorded_plugins(checkpoint: Path | None) -> dict[str, str]:
    """Plugin name -> origin (``"jemkit-x 0.2.0"``, ``"built-in"``) that ``checkpoint``'s metadata
    records; ``{}`` when there is no checkpoint or it records none (read from the header only)."""
    import json

    from jemkit.checkpoint import read_metadata

    if checkpoint is None or not Path(checkpoint).is_file():
        return {}
    try:
        raw = read_metadata(checkpoint).get("jemkit.plugins", "{}")
        origins = json.loads(raw)
    except (JemkitError, ValueError):
        return {}
    return {str(k): str(v) for k, v in origins.items()} if isinstance(origins, dict) else {}


@contextlib.contextmanager
def naming_missing_plugins(plugins: PluginSet, checkpoint: Path | None) -> Iterator[None]:
    """Turn an unknown component name inside the block into an error that says which recorded
    plugin package (and version) to install, when ``checkpoint`` records one that is missing."""
    try:
        yield
    except UnknownComponentError as exc:
        recorded = recorded_plugins(checkpoint)
        better = with_install_hint(exc, recorded, plugins.origins) if recorded else exc
        if better is exc:
            raise
        raise better from None


def names_missing_plugins(open_fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate ``open_fn(plugins, run_dir, checkpoint="last", ...)`` (:func:`jemkit.run_open.open_run`)
    so that an unknown component name says which plugin package the checkpoint's metadata records
    and the environment lacks (see :func:`naming_missing_plugins`)."""

    @functools.wraps(open_fn)
    def wrapper(plugins: PluginSet, run_dir: Path | str, checkpoint: Any = "last", *args: Any, **kwargs: Any) -> T:
        try:
            return open_fn(plugins, run_dir, checkpoint, *args, **kwargs)
        except UnknownComponentError as exc:
            from jemkit.checkpoint import resolve_checkpoint

            try:
                path = resolve_checkpoint(Path(run_dir), checkpoint)
            except JemkitError:
                raise exc from None
            better = with_install_hint(exc, recorded_plugins(path), plugins.origins)
            if better is exc:
                raise
            raise better from None

    return wrapper


def latest_checkpoint_of(run_dir: Path | None) -> Path | None:
    """The newest step checkpoint of ``run_dir`` (``None`` when there is none)."""
    from jemkit.checkpoint import checkpoint_dir, latest_checkpoint

    if run_dir is None or not Path(run_dir).is_dir():
        return None
    return latest_checkpoint(checkpoint_dir(Path(run_dir)))


__all__ = [
    "COMPONENT_KEYS",
    "ComponentIndex",
    "Culprit",
    "PASS_THROUGH",
    "PluginCodeError",
    "blame",
    "component_culprit",
    "describe_nonfinite_chains",
    "hook_culprit",
    "latest_checkpoint_of",
    "names_missing_plugins",
    "naming_missing_plugins",
    "plugin_files",
    "recorded_plugins",
]
