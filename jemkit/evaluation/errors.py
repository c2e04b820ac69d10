"""The evaluation's user-facing error."""

from __future__ import annotations

from jemkit.errors import JemkitError


class EvalError(JemkitError):
    """An evaluation cannot run as asked (missing weights, a bad setting, mismatched runs)."""
