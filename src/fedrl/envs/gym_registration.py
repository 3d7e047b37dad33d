"""Every built-in family as a Gymnasium environment id (``fedrl/CartPole-v0`` and so on).

``FamilyEnv`` is one client's single environment (C = 1, E = 1) stepping the family's pure
``transition``/``observe`` directly; Gymnasium's ``TimeLimit`` wrapper, added by
``gymnasium.make`` from ``max_episode_steps``, truncates at the family's time limit, so there is
no auto-reset and no double truncation here. Physical parameters are keyword arguments::

    env = gymnasium.make("fedrl/CartPole-v0", length=0.3)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from fedrl.envs.base import Continuous, Discrete, EnvFamily, params_from_rows
from fedrl.envs.cartpole import THETA_LIMIT, X_LIMIT

GYM_IDS = {
    "cartpole": "fedrl/CartPole-v0",
    "pendulum": "fedrl/Pendulum-v0",
    "mountaincar": "fedrl/MountainCar-v0",
    "airquality": "fedrl/AirQuality-v0",
}

_BIG = float(np.finfo(np.float32).max)
OBS_BOUNDS = {  # (low, high) of each observation; the classic ones as in Gymnasium
    "cartpole": ([-2 * X_LIMIT, -_BIG, -2 * THETA_LIMIT, -_BIG], [2 * X_LIMIT, _BIG, 2 * THETA_LIMIT, _BIG]),
    "pendulum": ([-1.0, -1.0, -8.0], [1.0, 1.0, 8.0]),
    "mountaincar": ([-1.2, -0.07], [0.6, 0.07]),
    "airquality": ([-1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, _BIG, 1.0, 1.0, 1.0]),
}


def _observation_space(family: EnvFamily) -> gym.spaces.Box:
    low, high = OBS_BOUNDS.get(family.name, ([-_BIG] * family.obs_dim, [_BIG] * family.obs_dim))
    return gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32), dtype=np.float32)


def _action_space(family: EnvFamily, params: np.ndarray) -> gym.Space:
    space = family.action_space
    if isinstance(space, Discrete):
        return gym.spaces.Discrete(space.n)
    bound = np.float32(family.column(params, space.bound_param)[0, 0])
    return gym.spaces.Box(-bound, bound, shape=(space.dim,), dtype=np.float32)


class FamilyEnv(gym.Env):
    """A single environment of ``family`` with the physical parameters given as keywords;
    a parameter left out takes its standard value, an unknown one raises ``ValueError``."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, family: EnvFamily, render_mode: str | None = None, **params: float):
        unknown = sorted(set(params) - set(family.param_names))
        if unknown:
            raise ValueError(
                f"unknown {family.name} parameter(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(family.param_names)}"
            )
        self.family = family
        self.render_mode = render_mode
        self.params = params_from_rows(family, [params])
        self.observation_space = _observation_space(family)
        self.action_space = _action_space(family, self.params)
        self._physics: Any = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; ``seed`` reseeds ``np_random``, which drives all randomness."""
        super().reset(seed=seed)
        self._physics = self.family.init_state(self.params, 1, self.np_random)
        return self.family.observe(self.params, self._physics)[0, 0], {}

    def step(self, action):
        """One step; ``truncated`` is always False here (``TimeLimit`` sets it)."""
        if self._physics is None:
            raise RuntimeError("call reset() before step()")
        if isinstance(self.family.action_space, Continuous):
            action = np.asarray(action, dtype=np.float64).reshape(1, 1, -1)
        elif self.action_space.contains(action):
            action = np.full((1, 1), int(action))
        else:
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        self._physics, reward, terminated = self.family.transition(self.params, self._physics, action, self.np_random)
        obs = self.family.observe(self.params, self._physics)[0, 0]
        return obs, float(reward[0, 0]), bool(terminated[0, 0]), False, {}


def register_families(families: Mapping[str, EnvFamily]) -> None:
    """Register each family under its id in ``GYM_IDS``; ids already registered are kept, so
    calling this twice is harmless."""
    for name, family in families.items():
        env_id = GYM_IDS[name]
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=FamilyEnv,
                kwargs={"family": family},
                max_episode_steps=family.time_limit,
                reward_threshold=family.solved_return,
            )
