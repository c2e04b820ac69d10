"""Calling lifecycle, logger and state hooks plugin by plugin.

The trainer does not call these hooks through pluggy's relay: it calls each implementation itself
(:class:`PluginHooks`), so that every plugin receives its own :class:`~jemkit.contracts.RunView`
(files it writes land in its own folder), its saved state comes back to it alone, and an
exception it raises names it (:func:`jemkit.culprit.blame`). Order is pluggy's (``tryfirst`` /
``trylast`` honoured, later registrations first); hook wrappers are not called.

Plugin state: at every checkpoint :meth:`PluginHooks.save_states` collects
``jemkit_save_state`` from each plugin (stored in the checkpoint's ``plugins`` entry under the
plugin's name), and on resume and rollback :meth:`PluginHooks.load_states` hands each plugin
implementing ``jemkit_load_state`` what it saved (``{}`` when nothing). Before ``summary.json``
is written, :meth:`PluginHooks.summary_entries` collects what plugins add to it. When a run is
opened for evaluation or sampling, :func:`load_inference_weights` lets a plugin substitute the weights
(``jemkit_inference_weights``, e.g. an EMA).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import pluggy
import torch
from torch import nn

from jemkit.culprit import Culprit, PluginCodeError, blame, hook_culprit

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from jemkit.contracts import RunView
    from jemkit.plugin_manager import PluginSet

#: What each hook is doing, for error messages.
_DURING: dict[str, str] = {
    "jemkit_run_start": "when the run started",
    "jemkit_step_end": "after an optimiser step",
    "jemkit_summary_entries": "while the run's summary was written",
    "jemkit_run_end": "when the run ended",
    "jemkit_log_record": "while logging a metrics record",
    "jemkit_log_histogram": "while logging a histogram",
    "jemkit_log_image": "while logging a sample grid",
    "jemkit_save_state": "while a checkpoint was written",
    "jemkit_load_state": "while a checkpoint was restored",
    "jemkit_inference_weights": "while the run was opened",
}


def implementations(plugins: PluginSet, hook: str) -> list[pluggy.HookImpl]:
    """The plain (non-wrapper) implementations of ``hook`` in the order pluggy calls them."""
    impls = getattr(plugins.hook, hook).get_hookimpls()
    return [impl for impl in reversed(impls) if not (impl.hookwrapper or impl.wrapper)]


def call_impl(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
    """Call one implementation with the arguments it asks for (pluggy allows fewer)."""
    return impl.function(**{name: kwargs[name] for name in impl.argnames if name in kwargs})


class PluginHooks:
    """Calls hooks of ``plugins`` one plugin at a time, each with the view ``view_for(plugin)``.

    ``cfg`` and ``source`` (the recipe and its file) let an error name the plugin's own recipe
    section when it has one.
    """

    def __init__(
        self,
        plugins: PluginSet,
        view_for: Callable[[str], RunView],
        cfg: DictConfig | None = None,
        source: str | None = None,
    ) -> None:
        self.plugins = plugins
        self.view_for = view_for
        self.cfg = cfg
        self.source = source
        self._impls: dict[str, list[pluggy.HookImpl]] = {}
        self._culprits: dict[tuple[str, str], Culprit] = {}

    def impls(self, hook: str) -> list[pluggy.HookImpl]:
        """The implementations of ``hook`` (looked up once per trainer)."""
        if hook not in self._impls:
            self._impls[hook] = implementations(self.plugins, hook)
        return self._impls[hook]

    def implemented(self, hook: str) -> bool:
        """Whether any plugin implements ``hook``."""
        return bool(self.impls(hook))

    def culprit(self, plugin: str, hook: str) -> Culprit:
        """Who to name when ``plugin``'s ``hook`` raises."""
        key = (plugin, hook)
        if key not in self._culprits:
            self._culprits[key] = hook_culprit(self.plugins, plugin, hook, self.cfg, self.source)
        return self._culprits[key]

    def call(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook`` with ``run`` (its plugin's view) and ``kwargs``;
        ``(plugin, result)`` for each, in call order."""
        results = []
        for impl in self.impls(hook):
            plugin = impl.plugin_name
            with blame(self.culprit(plugin, hook), _DURING.get(hook, "")):
                results.append((plugin, call_impl(impl, run=self.view_for(plugin), **kwargs)))
        return results

    def summary_entries(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """What plugins add to ``summary`` through ``jemkit_summary_entries``, in call order (JSON
        values); a result that is not a mapping of new string keys to JSON values is the plugin's
        error."""
        hook = "jemkit_summary_entries"
        added: dict[str, Any] = {}
        for impl in self.impls(hook):
            plugin = impl.plugin_name
            so_far = MappingProxyType({**summary, **added})
            with blame(self.culprit(plugin, hook), _DURING[hook]):
                entries = call_impl(impl, run=self.view_for(plugin), summary=so_far)
            if entries is None:
                continue
            try:
                if not isinstance(entries, Mapping):
                    kind = type(entries).__qualname__
                    raise TypeError(f"it returned a {kind}; return a mapping of summary keys to values, or None")
                for key, value in entries.items():
                    if not isinstance(key, str) or key in summary or key in added:
                        raise TypeError(
                            f"its summary key {key!r} is not a new string key; choose a name of its own (e.g. 'myplugin/x')"
                        )
                    added[key] = json_value(value, (key,))
            except TypeError as exc:
                raise PluginCodeError(self.culprit(plugin, hook), exc, _DURING[hook]) from None
        return added

    def save_states(self) -> dict[str, Any]:
        """Plugin name -> the state it returned from ``jemkit_save_state`` (``None`` results left out)."""
        states: dict[str, Any] = {}
        for plugin, state in self.call("jemkit_save_state"):
            if state is None:
                continue
            try:
                states[plugin] = storable(state, (plugin,))
            except TypeError as exc:
                raise PluginCodeError(self.culprit(plugin, "jemkit_save_state"), exc, _DURING["jemkit_save_state"]) from None
        return states

    def load_states(self, states: Mapping[str, Any]) -> None:
        """Give every plugin implementing ``jemkit_load_state`` what it saved (``{}`` when nothing)."""
        for impl in self.impls("jemkit_load_state"):
            plugin = impl.plugin_name
            with blame(self.culprit(plugin, "jemkit_load_state"), _DURING["jemkit_load_state"]):
                call_impl(impl, run=self.view_for(plugin), state=states.get(plugin) or {})


def storable(value: Any, path: tuple[str, ...]) -> Any:
    """``value`` as a plain structure a checkpoint holds (mappings become dicts); a :class:`TypeError`
    naming the path of the first part it cannot hold."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"state[{']['.join(map(repr, path))}] has the key {key!r}; keys must be str or int")
            out[key] = storable(item, (*path, str(key)))
        return out
    if isinstance(value, (list, tuple)):
        items = [storable(item, (*path, str(i))) for i, item in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise TypeError(
        f"its state at [{']['.join(map(repr, path))}] is a {type(value).__qualname__}, which a checkpoint cannot "
        "hold; return dicts, lists, tuples, tensors, numpy arrays, None, bool, int, float and str"
    )


def json_value(value: Any, path: tuple[str, ...]) -> Any:
    """``value`` as plain JSON (0-dim tensors and numpy scalars become numbers, NaN and infinities
    the strings ``"nan"``/``"inf"``/``"-inf"``); a :class:`TypeError` naming the path of the first
    part JSON cannot hold."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if value is None or type(value) in (bool, int, str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: json_value(item, (*path, key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(item, (*path, str(i))) for i, item in enumerate(value)]
    raise TypeError(
        f"its summary value at [{']['.join(map(repr, path))}] is a {type(value).__qualname__}, which summary.json "
        "cannot hold; return numbers, strings, booleans, None, lists and dicts with string keys"
    )


def load_inference_weights(
    plugins: PluginSet, cfg: DictConfig, model: nn.Module, states: Mapping[str, Any], source: str | None = None
) -> str | None:
    """Let the first plugin whose ``jemkit_inference_weights`` returns weights replace ``model``'s
    (``states``: the checkpoint's ``plugins`` entry); the name of that plugin, or ``None``.

    A state dict that does not fit the model raises what ``load_state_dict`` raises."""
    for impl in implementations(plugins, "jemkit_inference_weights"):
        plugin = impl.plugin_name
        with blame(hook_culprit(plugins, plugin, "jemkit_inference_weights", cfg, source), _DURING["jemkit_inference_weights"]):
            weights = call_impl(impl, config=cfg, state=states.get(plugin) or {})
        if weights is not None:
            model.load_state_dict(dict(weights))
            return plugin
    return None


__all__ = ["PluginHooks", "call_impl", "implementations", "json_value", "load_inference_weights", "storable"]
