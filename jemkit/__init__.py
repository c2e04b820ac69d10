"""jemkit: a plugin-based PyTorch framework for Joint Energy-based Models."""

from jemkit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
