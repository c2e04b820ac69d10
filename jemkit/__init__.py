"""jemkit: a plugin-based PyTorch framework for Joint Energy-based Models.

``import jemkit`` does not import torch. The Python API (:mod:`jemkit.api`: :func:`train`,
:func:`load_run`, :func:`load_recipe`, :func:`list_components`, :class:`Run`) loads on first use.

``jemkit.train`` is two things at once: the module of the training loop
(``from jemkit.train import Trainer``, as before) and, called, the API's
:func:`jemkit.api.train` (``jemkit.train("recipes/jem_digits.yaml", out="runs/x")``). Python binds a
submodule to its package's attribute of the same name when it is imported, so a plain function
``train`` here would be replaced by the module; the module is made callable instead.
"""

import sys
import types
from typing import Any

from jemkit.errors import CheckpointError, DataError, JemkitError, PluginError, RecipeError, RegistryError
from jemkit.hookspecs import hookimpl
from jemkit.registry import Registry

__version__ = "0.1.0"

#: Names re-exported lazily from :mod:`jemkit.api` (importing it imports torch).
_API = ("Run", "list_components", "load_recipe", "load_run")

#: The plugin surface (:data:`jemkit.contracts.__all__`), re-exported lazily (importing it imports torch).
_CONTRACTS = (
    "HISTOGRAM_ENERGY_DATA", "HISTOGRAM_ENERGY_SAMPLES", "METRIC_ACC", "METRIC_ENERGY_DATA", "METRIC_ENERGY_SAMPLES",
    "METRIC_LOSS", "TRAIN_PREFIX", "Backbone", "Batch", "BuildContext", "ChainInit", "ChainStart", "DataSplits",
    "EnergyFn", "EnergyHead", "FeatureExtractor", "JointEnergyModel", "Loss", "LossOutput", "RunView", "Sampler",
    "StepResult", "Transition", "energy_and_grad", "energy_grad_in_graph", "parameters_requiring_grad",
)


def __getattr__(name: str) -> Any:
    if name in _API:
        from jemkit import api

        return getattr(api, name)
    if name in _CONTRACTS:
        from jemkit import contracts

        return getattr(contracts, name)
    raise AttributeError(f"module 'jemkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API, *_CONTRACTS, "train"})


class _TrainModule(types.ModuleType):
    """The module ``jemkit.train``, callable as :func:`jemkit.api.train`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from jemkit.api import train

        return train(*args, **kwargs)


class _Package(types.ModuleType):
    """The ``jemkit`` package, whose ``train`` attribute is the callable training module."""

    @property
    def train(self) -> Any:
        import importlib
        import inspect

        module = importlib.import_module("jemkit.train")
        if type(module) is types.ModuleType:
            from jemkit import api

            module.__class__ = _TrainModule
            module.__signature__ = inspect.signature(api.train)  # for help() and IDEs
        return module

    @train.setter
    def train(self, value: Any) -> None:
        """The import system binds the submodule here; the getter reads it from ``sys.modules``."""


sys.modules[__name__].__class__ = _Package

__all__ = [
    "CheckpointError", "DataError", "JemkitError", "PluginError", "RecipeError", "Registry", "RegistryError", "Run",
    "__version__", "hookimpl", "list_components", "load_recipe", "load_run", "train", *_CONTRACTS,
]
