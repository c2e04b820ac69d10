"""User-facing errors: one paragraph naming the problem and the fix.

Every error a user can cause (a bad recipe, an unknown plugin name, a missing data set, a
corrupt checkpoint) is raised as a :class:`JemkitError`. The CLI prints its message and exits
non-zero without a traceback; anything else is a bug in jemkit or a plugin.
"""

from __future__ import annotations


class JemkitError(Exception):
    """A problem the user can fix; ``str(error)`` is the whole explanation."""


class RecipeError(JemkitError):
    """A recipe file or override is malformed, or names a component wrongly."""


class RegistryError(JemkitError):
    """A component name is unknown or registered twice."""


class PluginError(JemkitError):
    """A plugin failed to import or to register its components."""


class DataError(JemkitError):
    """A data set is missing, unreadable or of the wrong shape."""


class CheckpointError(JemkitError):
    """A checkpoint file is missing, corrupt, or belongs to another model."""


class DivergenceError(JemkitError):
    """Training diverged and could not be recovered."""


class EvalError(JemkitError):
    """An evaluation cannot run as asked (missing weights, a bad setting, mismatched runs)."""


class Interrupted(JemkitError):
    """The run was stopped by SIGINT/SIGTERM after writing a checkpoint (exit code 130)."""


class RunLockedError(JemkitError):
    """Another live process is writing the same run directory."""


class CheckpointIntegrityError(CheckpointError):
    """A checkpoint's bytes no longer match the digest recorded when it was written."""


class DiskFullError(JemkitError):
    """A write failed for lack of space (or the file-size limit); names the path and the bytes."""
