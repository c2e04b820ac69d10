"""Every kernel default, written once.

The kernel implements no component, so the components it falls back on are named here as data
and looked up through the registries when used (``jemkit list-plugins`` shows what each name
is). A recipe or a command-line flag overrides each of them; code elsewhere imports these names
instead of repeating the values.
"""

from __future__ import annotations

from typing import Any

#: Seed of a run whose recipe sets none (``seed:``).
SEED: int = 1
#: Device of a run whose recipe sets none (``device:``): CUDA when available, else the CPU.
DEVICE: str = "auto"

#: Transition steps per sampling call (``sampler.steps``).
SAMPLER_STEPS: int = 20
#: Model mode while sampling (``sampler.model_mode``): ``eval`` (JEM) or ``train`` (JEM++).
SAMPLER_MODEL_MODE: str = "eval"
#: Chain initialiser of a recipe without ``sampler.init`` (registry kind ``chain_init``).
CHAIN_INIT: str = "uniform"
#: Transition of a recipe without ``sampler.transition`` (registry kind ``transition``).
TRANSITION: str = "sgld"

#: Initialiser of fresh chains started from noise: ``jemkit sample --from noise`` and the fresh
#: chains of ``jemkit eval``'s generation section (registry kind ``chain_init``, default parameters).
FRESH_CHAIN_INIT: str = "uniform"
#: Transition that ``jemkit eval --refine-step-size S --refine-noise N`` builds with ``step_size=S``
#: and ``noise=N`` for refinement and the defence (registry kind ``transition``).
CLI_REFINE_TRANSITION: str = "sgld"

#: LR schedule of a recipe without ``schedule:`` (registry kind ``schedule``).
SCHEDULE: str = "constant"


def sampler_section() -> dict[str, Any]:
    """The ``sampler:`` section of a recipe that has none (a fresh dict on every call)."""
    return {"steps": SAMPLER_STEPS, "init": {"name": CHAIN_INIT}, "transition": {"name": TRANSITION}}
