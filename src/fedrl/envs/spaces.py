"""Families known by their spaces only: the environments live on the devices.

A fleet of real devices brings its own environments (a thermostat, a sensor node): the server
and the devices agree on the length of an observation and on the actions (how many choices, or
how many reals), nothing more; a device clips continuous actions to the experiment's bound, and
its episodes end when its own environment says so. ``spaces_family`` is the ``EnvFamily`` of
such a fleet: enough to build the network and describe the policy, never simulated (stepping it
raises). ``gym_spaces`` reads the spaces of a Gymnasium environment in fedrl's terms, and
``mismatch`` says, naming both sides, where a device's environment differs from what the
experiment trains.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from fedrl.envs.base import ActionSpace, Continuous, Discrete, EnvFamily, ParamRange
from fedrl.envs.gym_adapter import ACTION_BOUND


def _not_simulated(*_: Any) -> Any:
    raise RuntimeError("this family's environments run on the devices; it cannot be simulated")


def spaces_family(
    name: str,
    obs_dim: int,
    action_space: Discrete | Continuous,
    bound: float | None,
    time_limit: int,
    solved: float | None,
) -> EnvFamily:
    """An ``EnvFamily`` with the given spaces whose environments cannot be stepped here;
    continuous actions are clipped to ``bound`` (a fixed ``action_bound`` parameter)."""
    ranges = ()
    if isinstance(action_space, Continuous):
        ranges = (ParamRange(ACTION_BOUND, bound, bound, bound, "largest action magnitude (fixed)"),)
        action_space = Continuous(action_space.dim, ACTION_BOUND)
    return EnvFamily(
        name=name,
        description="environments on the devices, known by their spaces",
        param_ranges=ranges,
        obs_dim=obs_dim,
        action_space=action_space,
        time_limit=time_limit,
        solved_return=solved,
        init_state=_not_simulated,
        transition=_not_simulated,
        observe=_not_simulated,
    )


def gym_spaces(env: gym.Env) -> tuple[int, ActionSpace, float | None]:
    """``(obs_dim, action space, bound)`` of a Gymnasium environment (bound: for a symmetric
    continuous Box, else None); ``ValueError`` for spaces fedrl cannot learn."""
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        raise ValueError(f"observations must be a flat Box, this environment has {obs}")
    if isinstance(act, gym.spaces.Discrete):
        return int(obs.shape[0]), Discrete(int(act.n)), None
    if isinstance(act, gym.spaces.Box) and len(act.shape) == 1 and np.all(act.low == -act.high):
        return int(obs.shape[0]), Continuous(int(act.shape[0]), ACTION_BOUND), float(np.max(act.high))
    raise ValueError(f"actions must be Discrete or a symmetric 1-d Box, this environment has {act}")


def describe(obs_dim: int, space: ActionSpace, bound: float | None = None) -> str:
    """``obs (4,), 2 discrete actions`` / ``obs (3,), 1 continuous action in [-2, 2]``."""
    if isinstance(space, Discrete):
        return f"obs ({obs_dim},), {space.n} discrete actions"
    limits = "" if bound is None else f" in [-{bound:g}, {bound:g}]"
    return f"obs ({obs_dim},), {space.dim} continuous action{'s' if space.dim > 1 else ''}{limits}"


def mismatch(family: EnvFamily, env: gym.Env) -> str | None:
    """Why ``env`` cannot run a policy trained for ``family`` (naming both), or None when it can."""
    try:
        obs_dim, space, bound = gym_spaces(env)
    except ValueError as exc:
        return f"this device's environment: {exc}"
    expected = family.action_space
    same = obs_dim == family.obs_dim and (
        (isinstance(space, Discrete) and isinstance(expected, Discrete) and space.n == expected.n)
        or (isinstance(space, Continuous) and isinstance(expected, Continuous) and space.dim == expected.dim)
    )
    if same:
        return None
    return f"the experiment trains {describe(family.obs_dim, expected)}; this device's environment has " + describe(
        obs_dim, space, bound
    )
