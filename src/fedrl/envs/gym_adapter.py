"""Any Gymnasium environment as a fedrl ``EnvFamily`` (the slow path).

``gym_family`` wraps a registered id: every (client, env) slot holds a ``LazyEnv`` handle
that, the first time its observation is needed, creates the Gymnasium environment, lets a
user function set that client's physical parameters on it (``set_params(env.unwrapped,
row)``), and resets it with a seed drawn from the family's ``rng``. ``base.step`` calls
``init_state`` for a full fresh draw whenever any episode ends, but only the handles it keeps
(those of the finished episodes) are ever materialized, so the cost is one environment
creation per episode, not per slot per step.

The environments step in place: unlike the numpy families, an adapter state is not a value,
so an old ``EnvState`` must not be stepped again, and it cannot be saved with
``state_to_arrays``. The time limit is ``base.step``'s (the wrapped environment is stepped
without Gymnasium's ``TimeLimit``; its own ``truncated`` flag is ignored).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from fedrl.envs.base import Continuous, Discrete, EnvFamily, ParamRange

ParamSetter = Callable[[gym.Env, dict[str, float]], None]
ACTION_BOUND = "action_bound"


class LazyEnv:
    """One Gymnasium environment, created and reset on first use, with its last observation."""

    def __init__(self, env_id: str, row: dict[str, float], seed: int, set_params: ParamSetter):
        self.env_id, self.row, self.seed, self.set_params = env_id, row, seed, set_params
        self._env: gym.Env | None = None
        self._obs: np.ndarray | None = None

    def _ready(self) -> gym.Env:
        if self._env is None:
            env = gym.make(self.env_id, disable_env_checker=True).unwrapped
            self.set_params(env, self.row)
            self._obs, _ = env.reset(seed=self.seed)
            self._env = env
        return self._env

    @property
    def env(self) -> gym.Env:
        """The unwrapped environment, created, parameterised and reset on first access."""
        return self._ready()

    @property
    def obs(self) -> np.ndarray:
        """The last observation (the episode's first one before any step)."""
        self._ready()
        return self._obs

    def step(self, action: Any) -> tuple[float, bool]:
        """Step the environment; returns ``(reward, terminated)``."""
        self._obs, reward, terminated, _, _ = self._ready().step(action)
        return float(reward), bool(terminated)


class GymPhysics(NamedTuple):
    """An object array ``(C, E)`` of ``LazyEnv`` handles."""

    env: np.ndarray


def _spaces(env_id: str) -> tuple[gym.spaces.Box, gym.Space]:
    """The observation and action spaces of ``env_id``; observations must be a flat Box."""
    probe = gym.make(env_id, disable_env_checker=True)
    obs_space, action_space = probe.observation_space, probe.action_space
    probe.close()
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"{env_id}: gym_family needs a flat Box observation space, not {obs_space}")
    return obs_space, action_space


def _family_action_space(space: gym.Space) -> tuple[Discrete | Continuous, tuple[ParamRange, ...]]:
    """The fedrl action space, plus a fixed ``action_bound`` column for a symmetric Box."""
    if isinstance(space, gym.spaces.Discrete):
        return Discrete(int(space.n)), ()
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and np.all(space.low == -space.high):
        bound = float(np.max(space.high))
        fixed = ParamRange(ACTION_BOUND, bound, bound, bound, "largest action magnitude (fixed)")
        return Continuous(space.shape[0], ACTION_BOUND), (fixed,)
    raise ValueError(f"gym_family supports Discrete and symmetric 1-d Box actions, not {space}")


def _as_range(spec: ParamRange | Sequence[Any]) -> ParamRange:
    if isinstance(spec, ParamRange):
        return spec
    name, standard, low, high, *doc = spec
    return ParamRange(str(name), float(standard), float(low), float(high), doc[0] if doc else "")


def gym_family(
    env_id: str,
    param_ranges: Sequence[ParamRange | Sequence[Any]],
    set_params: ParamSetter,
    time_limit: int | None = None,
    solved_return: float | None = None,
) -> EnvFamily:
    """An ``EnvFamily`` over the Gymnasium id ``env_id``.

    ``param_ranges`` lists the per-client parameters as ``ParamRange`` or ``(name, standard,
    low, high[, doc])``; ``set_params(env, row)`` receives the unwrapped environment and a dict
    ``{name: value}`` of one client's parameters. The time limit and solved return default to
    the id's ``max_episode_steps`` and ``reward_threshold``.
    """
    spec = gym.spec(env_id)
    obs_space, gym_actions = _spaces(env_id)
    action_space, fixed = _family_action_space(gym_actions)
    user_ranges = tuple(_as_range(r) for r in param_ranges)
    limit = time_limit or spec.max_episode_steps
    if limit is None:
        raise ValueError(f"{env_id} has no max_episode_steps: pass time_limit")

    def init_state(params: np.ndarray, n_envs: int, rng: np.random.Generator) -> GymPhysics:
        seeds = rng.integers(0, 2**31 - 1, size=(params.shape[0], n_envs))
        handles = np.empty(seeds.shape, dtype=object)
        for (c, e), seed in np.ndenumerate(seeds):
            row = {r.name: float(params[c, i]) for i, r in enumerate(user_ranges)}
            handles[c, e] = LazyEnv(env_id, row, int(seed), set_params)
        return GymPhysics(handles)

    return EnvFamily(
        name=env_id,
        description=f"Gymnasium {env_id} through the fedrl adapter (slow path).",
        param_ranges=user_ranges + fixed,
        obs_dim=int(obs_space.shape[0]),
        action_space=action_space,
        time_limit=int(limit),
        solved_return=float(solved_return if solved_return is not None else (spec.reward_threshold or 0.0)),
        init_state=init_state,
        transition=_transition,
        observe=_observe,
    )


def _transition(params: np.ndarray, physics: GymPhysics, action: np.ndarray, rng: np.random.Generator):
    """Step every handle in place; continuous actions are clipped to the ``action_bound`` column."""
    action = np.asarray(action)
    continuous = action.ndim == 3  # continuous actions are (C, E, dim), discrete ones (C, E)
    if continuous:
        bound = params[:, -1, None, None]  # the action_bound column comes last
        action = np.clip(action, -bound, bound).astype(np.float32)
    reward = np.zeros(physics.env.shape, dtype=np.float32)
    terminated = np.zeros(physics.env.shape, dtype=bool)
    for (c, e), handle in np.ndenumerate(physics.env):
        a = action[c, e] if continuous else int(action[c, e])
        reward[c, e], terminated[c, e] = handle.step(a)
    return physics, reward, terminated


def _observe(params: np.ndarray, physics: GymPhysics) -> np.ndarray:
    """The handles' last observations as float32 ``(C, E, obs_dim)``."""
    obs = [np.asarray(h.obs, dtype=np.float32) for h in physics.env.ravel()]
    return np.stack(obs).reshape(physics.env.shape + obs[0].shape)


def load_setter(path: str) -> ParamSetter:
    """Import a parameter setter named ``"package.module:function"`` (for configs)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"setter must look like 'package.module:function', got {path!r}")
    try:
        setter = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load setter {path!r}: {exc}") from exc
    if not callable(setter):
        raise ValueError(f"setter {path!r} is not callable")
    return setter
