"""A fresh pluggy plugin manager per invocation, and the registries it fills.

Built-in plugins are imported from the explicit :data:`BUILTIN_PLUGINS` tuple; third-party
plugins come from the ``jemkit`` entry-point group, so a source checkout and an installed
wheel behave the same. A plugin that fails to import or to register is recorded as a
:class:`PluginFailure` and skipped; the others keep working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field

import pluggy

from jemkit import hookspecs
from jemkit.errors import PluginError
from jemkit.registry import Registries

ENTRY_POINT_GROUP = "jemkit"
BUILTIN_ORIGIN = "built-in"

#: First-party plugins, imported in this order.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "jemkit_plugins.models.backbones",
    "jemkit_plugins.models.heads",
    "jemkit_plugins.samplers.sampling",
    "jemkit_plugins.training.losses",
    "jemkit_plugins.data.data_digits",
    "jemkit_plugins.data.data_torchvision",
    "jemkit_plugins.training.optim",
    "jemkit_plugins.samplers.mcmc",
    "jemkit_plugins.samplers.jempp",
    "jemkit_plugins.samplers.informative",
    "jemkit_plugins.training.sam",
    "jemkit_plugins.data.data_toy",
    "jemkit_plugins.evaluation.toy_plot",
    "jemkit_plugins.evaluation.ood_sets",
    "jemkit_plugins.evaluation.feature_extractors",
)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or could not register its components."""

    plugin: str
    origin: str
    error: str

    def message(self) -> str:
        return (
            f"Plugin {self.plugin!r} ({self.origin}) was skipped: {self.error}. The other plugins "
            "still work; fix or uninstall this one to silence the warning."
        )


@dataclass
class PluginSet:
    """A plugin manager together with the registries its plugins filled."""

    manager: pluggy.PluginManager
    registries: Registries
    #: plugin name -> origin ("built-in", or "distribution version").
    origins: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.manager.hook


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def load_plugins(
    extra: Iterable[tuple[str, object]] = (),
    *,
    builtins: Iterable[str] = BUILTIN_PLUGINS,
    entry_points: bool = True,
) -> PluginSet:
    """Build a fresh plugin manager, load every plugin, and fill the registries.

    ``extra`` adds ``(name, module_or_object)`` plugins (tests and embedding use this).
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    plugins = PluginSet(manager=manager, registries=Registries())

    def add(name: str, origin: str, load) -> None:
        try:
            obj = load()
            manager.register(obj, name=name)
        except Exception as exc:  # a broken plugin must not take the others down
            plugins.failures.append(PluginFailure(name, origin, _describe(exc)))
            return
        plugins.origins[name] = origin

    for module_name in builtins:
        add(module_name.rsplit(".", 1)[-1], BUILTIN_ORIGIN, lambda m=module_name: importlib.import_module(m))
    if entry_points:
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
            if manager.has_plugin(ep.name) or ep.name in plugins.origins:
                holder = plugins.origins.get(ep.name, "another plugin")
                plugins.failures.append(
                    PluginFailure(
                        ep.name,
                        origin,
                        f"its entry-point name {ep.name!r} is already taken by a {holder} plugin; "
                        "rename the entry point in the plugin's pyproject.toml",
                    )
                )
                continue
            add(ep.name, origin, ep.load)
    for name, obj in extra:
        add(name, "in-process", lambda o=obj: o)

    _check_hooks(plugins)
    _fill_registries(plugins)
    return plugins


def _check_hooks(plugins: PluginSet) -> None:
    """Unregister plugins that implement hooks jemkit does not define (likely misspellings)."""
    try:
        plugins.manager.check_pending()
    except pluggy.PluginValidationError as exc:
        bad = exc.plugin
        name = plugins.manager.get_name(bad) or repr(bad)
        plugins.manager.unregister(bad)
        origin = plugins.origins.pop(name, "?")
        known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("jemkit_")))
        plugins.failures.append(PluginFailure(name, origin, f"{exc} (known hooks: {known})"))
        _check_hooks(plugins)


def _fill_registries(plugins: PluginSet) -> None:
    """Call every registration hook plugin by plugin, so one failure skips only that plugin."""
    for registry in plugins.registries:
        hook_name = hookspecs.REGISTRATION_HOOKS[registry.kind]
        caller = getattr(plugins.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order (pluggy calls them in reverse)
            if impl.plugin_name not in plugins.origins:
                continue
            registry.current_plugin = impl.plugin_name
            try:
                impl.function(registry=registry)
            except Exception as exc:
                plugins.failures.append(
                    PluginFailure(impl.plugin_name, plugins.origins[impl.plugin_name], _describe(exc))
                )
            finally:
                registry.current_plugin = "?"


def require_no_failures(plugins: PluginSet) -> None:
    """Raise a :class:`PluginError` listing every failed plugin (for strict callers)."""
    if plugins.failures:
        raise PluginError(" ".join(f.message() for f in plugins.failures))


__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginFailure",
    "PluginSet",
    "load_plugins",
    "require_no_failures",
]
