"""jemkit: a plugin-based PyTorch framework for Joint Energy-based Models."""

from jemkit.hookspecs import hookimpl
from jemkit.registry import Registry

__version__ = "0.1.0"

__all__ = ["Registry", "__version__", "hookimpl"]
