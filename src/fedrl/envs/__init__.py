"""Heterogeneous environment families for federated RL, and their registry.

Importing this package registers every built-in family as a Gymnasium id
(``fedrl/CartPole-v0``, ``fedrl/Pendulum-v0``, ``fedrl/MountainCar-v0``,
``fedrl/AirQuality-v0``); see ``docs/envs.md``.
"""

from __future__ import annotations

from fedrl.envs.airquality import AIRQUALITY
from fedrl.envs.base import (
    Continuous,
    Discrete,
    EnvFamily,
    EnvState,
    ParamRange,
    StepResult,
    heldout_params,
    heldout_within,
    params_from_rows,
    reset,
    sample_params,
    step,
)
from fedrl.envs.cartpole import CARTPOLE
from fedrl.envs.gym_registration import register_families
from fedrl.envs.mountaincar import MOUNTAINCAR
from fedrl.envs.pendulum import PENDULUM

FAMILIES: dict[str, EnvFamily] = {f.name: f for f in (CARTPOLE, PENDULUM, MOUNTAINCAR, AIRQUALITY)}


def get_family(name: str) -> EnvFamily:
    """The built-in family called ``name``; ``ValueError`` lists the allowed names otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown environment family {name!r}; allowed: {', '.join(FAMILIES)}") from None


register_families(FAMILIES)

__all__ = [
    "FAMILIES",
    "Continuous",
    "Discrete",
    "EnvFamily",
    "EnvState",
    "ParamRange",
    "StepResult",
    "get_family",
    "heldout_params",
    "heldout_within",
    "params_from_rows",
    "reset",
    "sample_params",
    "step",
]
