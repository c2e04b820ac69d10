"""The components ``jemkit eval`` builds besides the runs: OOD sets, the feature extractor, the
refinement transition and the fresh-chain initialiser, all looked up by name in the registries.

Everything here can fail on a name, a parameter or a missing file, so :func:`build_components`
and :func:`defence_transition` run before any long computation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from torch.utils.data import Dataset

from jemkit import defaults
from jemkit.build import build_by_name, registered_transitions
from jemkit.config import build_params
from jemkit.contracts import BuildContext, ChainInit, FeatureExtractor, Transition
from jemkit.errors import EvalError, JemkitError
from jemkit.evaluation.rundir import LoadedRun
from jemkit.evaluation.settings import INCEPTION_EXTRACTOR, EvalSettings
from jemkit.plugin_manager import PluginSet


@dataclass
class EvalComponents:
    """The OOD sets and the feature extractor of one evaluation, with the parameters they were built with."""

    ood_sets: dict[str, Dataset] = field(default_factory=dict)
    ood_params: dict[str, Any] = field(default_factory=dict)
    extractor: FeatureExtractor | None = None
    extractor_params: dict[str, Any] = field(default_factory=dict)


def _params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}


def build_components(plugins: PluginSet, settings: EvalSettings, context: BuildContext) -> EvalComponents:
    """The OOD sets (section ``ood``) and the feature extractor (section ``generation``) the settings ask for."""
    built = EvalComponents()
    if "ood" in settings.sections:
        built.ood_sets, built.ood_params = build_ood_sets(plugins, settings, context)
    if "generation" in settings.sections:
        built.extractor, built.extractor_params = build_extractor(plugins, settings, context)
    return built


def build_ood_sets(
    plugins: PluginSet, settings: EvalSettings, context: BuildContext
) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """The OOD data sets named in the settings, checked against the model's input shape."""
    registry = plugins.registries["ood"]
    stray = sorted(set(settings.ood_params) - set(settings.ood_sets))
    if stray:
        raise EvalError(
            f"--ood-param sets parameters of {', '.join(map(repr, stray))}, which is not among --ood-sets "
            f"({','.join(settings.ood_sets)}). Add it to --ood-sets or drop the parameter."
        )
    components = {name: registry.get(name) for name in settings.ood_sets}  # unknown: did-you-mean error
    sets, used = {}, {}
    for name, component in components.items():
        params = build_params(
            component.params, settings.ood_params.get(name, {}), f"ood.{name}", "--ood-param", f"OOD set {name!r}"
        )
        try:
            dataset = component.factory(params, context)
            first = dataset[0][0] if len(dataset) else None
        except JemkitError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise EvalError(f"OOD set {name!r} could not be built: {exc}. Leave it out of --ood-sets.") from None
        if first is None or tuple(first.shape) != tuple(context.input_shape or ()):
            got = "no inputs" if first is None else f"inputs of shape {tuple(first.shape)}"
            raise EvalError(
                f"OOD set {name!r} yields {got}, but the model takes inputs of shape {context.input_shape}. "
                "Choose OOD sets made for this data set (see `jemkit list-plugins`)."
            )
        sets[name], used[name] = dataset, _params_dict(params)
    return sets, used


def build_extractor(
    plugins: PluginSet, settings: EvalSettings, context: BuildContext
) -> tuple[FeatureExtractor, dict[str, Any]]:
    """The feature extractor for FID/IS (its weights loaded or trained now, before any sampling)."""
    component = plugins.registries["feature_extractor"].get(settings.feature_extractor)
    raw = dict(settings.extractor_params)
    if settings.inception_weights and settings.feature_extractor == INCEPTION_EXTRACTOR:
        raw["weights"] = settings.inception_weights
    params = build_params(
        component.params,
        raw,
        f"feature_extractor.{component.name}",
        "--extractor-param",
        f"feature extractor {component.name!r}",
    )
    try:
        extractor = component.factory(params, context)
    except JemkitError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise EvalError(f"Feature extractor {component.name!r} could not be built: {exc}.") from None
    if not isinstance(extractor, FeatureExtractor):
        raise EvalError(f"Feature extractor {component.name!r} is not a jemkit.contracts.FeatureExtractor.")
    return extractor.to(context.device).eval(), _params_dict(params)


def run_transition_cfg(run: LoadedRun) -> dict[str, Any]:
    """The run's ``sampler.transition`` section as a plain dict (the default transition's when absent)."""
    node = (run.cfg.get("sampler") or {}).get("transition") or {"name": defaults.TRANSITION}
    if isinstance(node, dict):
        return dict(node)
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def refine_transition(plugins: PluginSet, settings: EvalSettings, run: LoadedRun) -> tuple[Transition, dict[str, Any]]:
    """The transition used for refinement and the defence, and its description for the report: the
    run's own, or with ``--refine-step-size/--refine-noise`` the registered ``CLI_REFINE_TRANSITION``."""
    if settings.refine_step_size is None:
        return run.sampler.transition, {"source": "run", **run_transition_cfg(run), "model_mode": run.sampler.model_mode}
    name = defaults.CLI_REFINE_TRANSITION
    component = plugins.registries["transition"].get(name)
    raw = {"step_size": settings.refine_step_size, "noise": settings.refine_noise}
    params = build_params(component.params, raw, "refine", "--refine-step-size/--refine-noise", f"transition {name!r}")
    return component.factory(params, run.context), {
        "source": "cli",
        "name": name,
        **raw,
        "model_mode": run.sampler.model_mode,
    }


def defence_transition(
    plugins: PluginSet, settings: EvalSettings, run: LoadedRun
) -> tuple[Transition, dict[str, Any]]:
    """:func:`refine_transition`, checked to declare a differentiable step when ``--defence-attack
    end_to_end`` differentiates through it (an :class:`EvalError` otherwise)."""
    transition, info = refine_transition(plugins, settings, run)
    if settings.defence_attack == "end_to_end" and not getattr(transition, "differentiable", False):
        able = registered_transitions(plugins, run.context, lambda t: bool(getattr(t, "differentiable", False)))
        listed = f" Transitions with one: {', '.join(able)}." if able else ""
        raise EvalError(
            f"--defence-attack end_to_end differentiates through every refinement step, but the refinement "
            f"transition {info.get('name')!r} ({type(transition).__name__}) declares no differentiable step."
            f"{listed} Use --defence-attack bpda, or refine with {defaults.CLI_REFINE_TRANSITION} via "
            "--refine-step-size and --refine-noise."
        )
    return transition, info


def fresh_chain_init(plugins: PluginSet, context: BuildContext) -> ChainInit:
    """Initialiser of the generation section's fresh chains: the registered ``FRESH_CHAIN_INIT``
    of :mod:`jemkit.defaults` with its default parameters (``uniform``: ``U(-1, 1)``)."""
    return build_by_name(plugins, "chain_init", defaults.FRESH_CHAIN_INIT, context, source="jemkit eval")
