"""A fresh pluggy plugin manager per invocation, and the registries it fills.

Built-in plugins are imported from the explicit :data:`BUILTIN_PLUGINS` tuple; third-party
plugins come from the ``jemkit`` entry-point group, so a source checkout and an installed
wheel behave the same. A plugin that fails to import or to register is recorded as a
:class:`PluginFailure` and skipped; the others keep working. Registration is all-or-nothing per
plugin: one that fails part-way keeps none of its components and is unregistered.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
    "jemkit_plugins.training.ema",
    "jemkit_plugins.data.data_toy",
    "jemkit_plugins.evaluation.toy_plot",
    "jemkit_plugins.evaluation.ood_sets",
    "jemkit_plugins.evaluation.feature_extractors",
    "jemkit_plugins.importers.jem_ref",
    "jemkit_plugins.loggers.tensorboard",
)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or could not register its components."""

    plugin: str
    origin: str
    error: str
    #: When it failed: ``load`` (import or entry point), ``hooks`` (a hook jemkit does not
    #: define), ``register`` (a registration hook raised) or ``commands`` (adding subcommands).
    stage: str = "load"

    def message(self) -> str:
        if self.stage == "commands":
            return (
                f"Plugin {self.plugin!r} ({self.origin}) could not add its commands: {self.error}. Its "
                "components and the other plugins still work; fix or uninstall it to silence the warning."
            )
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
    #: plugin name -> (distribution, version) that ships it; built-ins ship with ``jemkit``.
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)

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

    from jemkit import __version__

    def add(name: str, origin: str, load, distribution: tuple[str, str] | None = None) -> None:
        try:
            obj = load()
            manager.register(obj, name=name)
        except Exception as exc:  # a broken plugin must not take the others down
            plugins.failures.append(PluginFailure(name, origin, _describe(exc)))
            return
        plugins.origins[name] = origin
        if distribution is not None:
            plugins.distributions[name] = distribution

    for module_name in builtins:
        add(
            module_name.rsplit(".", 1)[-1], BUILTIN_ORIGIN, lambda m=module_name: importlib.import_module(m),
            ("jemkit", __version__),
        )
    if entry_points:
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
            shipped = (dist.name, dist.version) if dist is not None else None
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
            add(ep.name, origin, ep.load, shipped)
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
        plugins.distributions.pop(name, None)
        plugins.failures.append(PluginFailure(name, origin, f"{exc} (known hooks: {known})", stage="hooks"))
        _check_hooks(plugins)


def _call(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
    """Call one hook implementation with the arguments it asks for (pluggy allows fewer)."""
    return impl.function(**{name: kwargs[name] for name in impl.argnames if name in kwargs})


def _impls(plugins: PluginSet, hook_name: str, plugin: str) -> list[pluggy.HookImpl]:
    return [impl for impl in getattr(plugins.hook, hook_name).get_hookimpls() if impl.plugin_name == plugin]


def _skip(plugins: PluginSet, plugin: str, error: str, stage: str) -> None:
    """Record ``plugin`` as failed and unregister it, so none of its hooks run."""
    origin = plugins.origins.pop(plugin, "?")
    plugins.distributions.pop(plugin, None)
    if plugins.manager.has_plugin(plugin):
        plugins.manager.unregister(name=plugin)
    plugins.failures.append(PluginFailure(plugin, origin, error, stage=stage))


def _fill_registries(plugins: PluginSet) -> None:
    """Run each plugin's registration hooks, plugin by plugin in load order, all or nothing: a
    plugin whose hook raises (a name collision, a bad parameter class, its own bug) keeps none of
    its components, is unregistered and recorded as a failure; the other plugins are unaffected."""
    for plugin in list(plugins.origins):
        try:
            for registry in plugins.registries:
                for impl in _impls(plugins, hookspecs.REGISTRATION_HOOKS[registry.kind], plugin):
                    registry.current_plugin = plugin
                    try:
                        _call(impl, registry=registry)
                    finally:
                        registry.current_plugin = "?"
        except Exception as exc:
            dropped = [f"{c.kind} {c.name!r}" for registry in plugins.registries for c in registry.remove_plugin(plugin)]
            undone = f"; its other components ({', '.join(dropped)}) were not registered either" if dropped else ""
            _skip(plugins, plugin, _describe(exc) + undone, "register")


def register_commands(plugins: PluginSet, subparsers: Any) -> dict[str, list[str]]:
    """Let every plugin add subcommands through ``jemkit_register_commands(subparsers)``.

    ``subparsers`` is the ``argparse`` sub-parser action of the ``jemkit`` command line. Plugins
    are called one at a time; one that raises, takes a name already in use, or adds a command
    without a ``handler`` default keeps none of its commands and is recorded as a failure
    (stage ``commands``). Returns plugin name -> the command names (and aliases) it added.
    """
    added: dict[str, list[str]] = {}
    for plugin in list(plugins.origins):
        for impl in _impls(plugins, "jemkit_register_commands", plugin):
            before = dict(subparsers.choices)
            help_rows = list(getattr(subparsers, "_choices_actions", []))  # argparse's --help rows
            try:
                _call(impl, subparsers=subparsers)
                replaced = sorted(n for n in before if subparsers.choices.get(n) is not before[n])
                if replaced:
                    raise PluginError(f"it replaced the command(s) {', '.join(replaced)}, which are already taken")
                new = [n for n in subparsers.choices if n not in before]
                no_handler = [n for n in new if not callable(subparsers.choices[n].get_default("handler"))]
                if no_handler:
                    raise PluginError(
                        f"its command(s) {', '.join(no_handler)} have no handler; call "
                        "parser.set_defaults(handler=fn) with fn(args, console, errors) -> exit code"
                    )
            except Exception as exc:
                subparsers.choices.clear()
                subparsers.choices.update(before)
                if hasattr(subparsers, "_choices_actions"):
                    subparsers._choices_actions[:] = help_rows
                origin = plugins.origins.get(plugin, "?")
                reason = str(exc) if isinstance(exc, PluginError) else _describe(exc)
                plugins.failures.append(
                    PluginFailure(plugin, origin, f"{reason}; none of its commands were added", stage="commands")
                )
                continue
            if new:
                added.setdefault(plugin, []).extend(new)
    return added


#: Hooks through which a plugin receives what a run logs. A plugin implementing any of them is a
#: *logger*, named by its plugin name, that a recipe switches on with ``loggers: [NAME]``.
LOGGER_HOOKS: tuple[str, ...] = ("jemkit_log_record", "jemkit_log_histogram", "jemkit_log_image")


def logger_names(plugins: PluginSet) -> list[str]:
    """Names of the loaded plugins that implement a logger hook (:data:`LOGGER_HOOKS`), sorted."""
    names: set[str] = set()
    for hook_name in LOGGER_HOOKS:
        caller = getattr(plugins.hook, hook_name, None)
        if caller is not None:
            names.update(impl.plugin_name for impl in caller.get_hookimpls())
    return sorted(names)


def require_no_failures(plugins: PluginSet) -> None:
    """Raise a :class:`PluginError` listing every failed plugin (for strict callers)."""
    if plugins.failures:
        raise PluginError(" ".join(f.message() for f in plugins.failures))


__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "LOGGER_HOOKS",
    "PluginFailure",
    "PluginSet",
    "load_plugins",
    "logger_names",
    "register_commands",
    "require_no_failures",
]
