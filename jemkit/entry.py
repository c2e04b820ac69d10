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

:func:`main` also installs the stop handlers of :mod:`jemkit.stopping` first thing, so that SIGTERM
during start-up (imports, plugin loading, building a run) ends the command with a message and exit
code 130 instead of killing it silently. Once the command has returned, it ignores both signals
for the little that is left (the interpreter's teardown, which can take a second after torch): at
teardown Python puts back the default handlers, and a SIGTERM landing there would otherwise end a
finished, fully written command with exit -15 instead of its own exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping, Sequence

#: Exit code of a command stopped by SIGINT/SIGTERM (as :data:`jemkit.cli.EXIT_INTERRUPTED`).
EXIT_INTERRUPTED = 130
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
    """Apply the environment defaults, make SIGTERM stop the command with a message as SIGINT does
    (:mod:`jemkit.stopping`), then run :func:`jemkit.cli.main`; returns the exit code."""
    apply_env_defaults()
    from jemkit import stopping

    stopping.install()
    try:
        from jemkit.cli import main as cli_main

        code = cli_main(argv)
    except stopping.StopRequested as stop:  # before the command started (imports, argument parsing)
        sys.stderr.write(f"stopped by {stop.name} during start-up, before the command began; nothing was written\n")
        code = EXIT_INTERRUPTED
    try:
        stopping.ignore_from_now_on()  # the command is over: interpreter teardown must not turn a stop into -15
    except stopping.StopRequested:  # it landed in the instant between the command's return and that line
        stopping.ignore_from_now_on()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
