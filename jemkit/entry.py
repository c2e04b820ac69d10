"""The process entry point of the ``jemkit`` console script and of ``python -m jemkit``.

Both entry points call :func:`main`, which sets process-wide defaults that must be in place
*before torch is imported* and only then imports :mod:`jemkit.cli` (which, like ``import
jemkit``, does not import torch). Today that is one setting, ``OMP_WAIT_POLICY=PASSIVE``:
PyTorch's OpenMP threads otherwise spin while idle, and on a loaded machine with few cores that
slowed training steps by up to 40x (measured); results are unchanged. The OpenMP runtime reads the
variable once, when torch loads it, so setting it anywhere later has no effect.

The default lives here rather than in ``jemkit/__init__.py`` so that programs which only
``import jemkit`` as a library keep their own OpenMP settings. A value the user already set
(e.g. ``OMP_WAIT_POLICY=ACTIVE jemkit run ...``) is left alone. Child processes inherit the
environment, so ``jemkit run --nproc N`` workers (torchrun, then ``python -m jemkit``) get it too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping, Sequence

#: Environment defaults the command line applies unless the user set the variable.
ENV_DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_env_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each :data:`ENV_DEFAULTS` variable that ``environ`` (default ``os.environ``) lacks.

    Returns the variables it set. Has an effect on OpenMP only if called before torch is imported.
    """
    env = os.environ if environ is None else environ
    added = {key: value for key, value in ENV_DEFAULTS.items() if key not in env}
    env.update(added)
    return added


def main(argv: Sequence[str] | None = None) -> int:
    """Apply the environment defaults, then run :func:`jemkit.cli.main`; returns the exit code."""
    apply_env_defaults()
    from jemkit.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
