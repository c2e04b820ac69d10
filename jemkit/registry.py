"""Typed, per-kind registries of named components.

A plugin registers a *factory* under a name, together with the dataclass of parameters that
the factory accepts. Recipes then choose components by that name (``{name: sgld, ...}``); the
build step validates the remaining keys against the dataclass and calls
``factory(params, context)``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jemkit.errors import RegistryError

#: The kinds of component jemkit knows, in the order ``list-plugins`` shows them.
KINDS: tuple[str, ...] = (
    "backbone",
    "head",
    "chain_init",
    "transition",
    "loss",
    "data",
    "optimizer",
    "schedule",
    "ood",
    "feature_extractor",
    "importer",
)


@dataclass(frozen=True)
class Component:
    """One registered component: how to build it and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type | None
    description: str
    plugin: str = "?"


def first_line(text: str | None) -> str:
    """The first non-empty line of ``text`` (a docstring), or an empty string."""
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class UnknownComponentError(RegistryError):
    """A component name no installed plugin registered (``name``, ``kind``, ``where``, ``known``)."""

    def __init__(self, message: str, name: object, kind: str | None, where: str | None, known: list[str]) -> None:
        super().__init__(message)
        self.name = name
        self.kind = kind
        self.where = where
        self.known = known


def unknown_name_error(
    name: object, known: Iterable[str], kind: str | None = None, where: str | None = None
) -> UnknownComponentError:
    """The error for an unknown component ``name``: a did-you-mean, the known names, and a
    pointer to ``jemkit list-plugins``. ``kind`` narrows the wording (``None``: any kind);
    ``where`` (e.g. ``"recipes/x.yaml, key sampler.transition.name"``) leads the message."""
    choices = sorted(set(known))
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    label = f"{kind} " if kind else ""
    lead = f"{where}: " if where else ""
    return UnknownComponentError(
        f"{lead}Unknown {label or 'component '}{name!r}.{hint} Known {label}components: "
        f"{', '.join(choices) or 'none'}. Run `jemkit list-plugins` to see every installed "
        "component, or install the plugin that provides it.",
        name, kind, where, choices,
    )


#: Plugin origins that name no installable package (see :class:`jemkit.plugin_manager.PluginSet`).
_NOT_A_PACKAGE = ("built-in", "in-process", "entry point", "?")


def missing_plugin_packages(recorded: Mapping[str, str], installed: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(plugin, package, version)`` for each plugin a run recorded (plugin name -> origin
    ``"package version"``, the ``jemkit.plugins`` checkpoint metadata) that is not installed now,
    or is installed from another package or version (``installed``: the same mapping today)."""
    missing = []
    for plugin, origin in recorded.items():
        if origin in _NOT_A_PACKAGE or installed.get(plugin) == origin:
            continue
        package, _, version = origin.partition(" ")
        missing.append((plugin, package, version))
    return missing


def with_install_hint(
    error: UnknownComponentError, recorded: Mapping[str, str], installed: Mapping[str, str]
) -> RegistryError:
    """``error`` reworded for a run whose metadata ``recorded`` plugin packages that ``installed``
    lacks: it names the packages and versions to install (``error`` itself when none is missing)."""
    missing = missing_plugin_packages(recorded, installed)
    if not missing:
        return error
    label = f"{error.kind} " if error.kind else ""
    lead = f"{error.where}: " if error.where else ""
    listed = ", ".join(
        f"plugin {plugin!r} from {package} {version}"
        + (f" (installed now: {installed[plugin]})" if plugin in installed else "")
        for plugin, package, version in missing
    )
    pins = " ".join(f"'{package}=={version}'" if version else f"'{package}'" for _, package, version in missing)
    return UnknownComponentError(
        f"{lead}Unknown {label or 'component '}{error.name!r}: the run was made with {listed}, which "
        f"{'is' if len(missing) == 1 else 'are'} not installed as recorded. Install "
        f"{'it' if len(missing) == 1 else 'them'} with `pip install {pins}` and run the command again "
        f"(installed {label}components: {', '.join(error.known) or 'none'}).",
        error.name, error.kind, error.where, error.known,
    )


class Registry:
    """Components of one kind, keyed by name.

    Duplicate names are an error, and an unknown name gets a did-you-mean suggestion plus a
    pointer to ``jemkit list-plugins``.
    """

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self._components: dict[str, Component] = {}
        #: Name of the plugin currently registering; set by the plugin manager.
        self.current_plugin = "?"

    def register(
        self,
        name: str,
        factory: Callable[..., Any],
        params: type | None = None,
        description: str | None = None,
    ) -> Component:
        """Register ``factory`` as ``name``.

        ``factory(params, context)`` must return the component; ``params`` is an instance of the
        ``params`` dataclass filled from the recipe (``None`` if the component takes none).
        ``description`` defaults to the first line of the factory's docstring.
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(
                f"Plugin {self.current_plugin!r} tried to register a {self.kind} named {name!r}; "
                "component names must be Python identifiers such as 'replay_buffer'."
            )
        if params is not None and not dataclasses.is_dataclass(params):
            raise RegistryError(
                f"Plugin {self.current_plugin!r} registered {self.kind} {name!r} with params "
                f"{params!r}, which is not a dataclass; declare its parameters as a @dataclass."
            )
        if name in self._components:
            previous = self._components[name]
            raise RegistryError(
                f"Two plugins register a {self.kind} named {name!r}: {previous.plugin!r} and "
                f"{self.current_plugin!r}. Rename one of them, or uninstall the plugin you do "
                "not want (see `jemkit list-plugins`)."
            )
        component = Component(
            kind=self.kind,
            name=name,
            factory=factory,
            params=params,
            description=description or first_line(factory.__doc__) or "(no description)",
            plugin=self.current_plugin,
        )
        self._components[name] = component
        return component

    def get(self, name: str, where: str | None = None) -> Component:
        """The component called ``name``; a :class:`RegistryError` with suggestions if unknown,
        led by ``where`` (the recipe file and key path) when given."""
        try:
            return self._components[name]
        except KeyError:
            pass
        raise unknown_name_error(name, self._components, self.kind, where) from None

    def remove_plugin(self, plugin: str) -> list[Component]:
        """Unregister every component ``plugin`` registered (a plugin whose registration failed
        part-way keeps none); returns them."""
        removed = [c for c in self._components.values() if c.plugin == plugin]
        for component in removed:
            del self._components[component.name]
        return removed

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def __iter__(self) -> Iterator[Component]:
        return iter(sorted(self._components.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._components)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._components)


class Registries:
    """One :class:`Registry` per kind, reachable as attributes or by kind name."""

    def __init__(self) -> None:
        self._by_kind = {kind: Registry(kind) for kind in KINDS}

    def __getitem__(self, kind: str) -> Registry:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise RegistryError(f"Unknown component kind {kind!r}; kinds are {', '.join(KINDS)}.") from None

    def __iter__(self) -> Iterator[Registry]:
        return iter(self._by_kind.values())

    def components(self) -> list[Component]:
        """Every registered component, grouped by kind in :data:`KINDS` order."""
        return [c for registry in self for c in registry]

    def named(self, names: Iterable[str]) -> list[Component]:
        """The components called any of ``names`` (of every kind), in :meth:`components` order;
        a :class:`RegistryError` with suggestions for the first name no kind knows."""
        components = self.components()
        known = {c.name for c in components}
        wanted = list(names)
        for name in wanted:
            if name not in known:
                raise unknown_name_error(name, known)
        return [c for c in components if c.name in wanted]
