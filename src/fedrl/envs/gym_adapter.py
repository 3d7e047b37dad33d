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

import difflib
import functools
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from fedrl.core.errors import UserCodeError
from fedrl.envs.base import Continuous, Discrete, EnvFamily, ParamRange

ParamSetter = Callable[[gym.Env, dict[str, float]], None]
ACTION_BOUND = "action_bound"


LIBRARIES = (Path(__file__).resolve().parents[1], Path(gym.__file__).resolve().parent)  # fedrl's and Gymnasium's


def blame(what: str, exc: BaseException, libraries: tuple[Path, ...] = LIBRARIES) -> UserCodeError:
    """``exc``, raised by the user's ``what``, as one line naming the last frame of the user's own
    code (any frame outside ``libraries``)."""
    theirs = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<")  # <frozen importlib._bootstrap> and the like
        and not any(Path(frame.filename).resolve().is_relative_to(folder) for folder in libraries)
    ]
    where = f" at {theirs[-1].filename}:{theirs[-1].lineno}" if theirs else ""
    return UserCodeError(f"{what} raised {type(exc).__name__}: {exc}{where}")


def setter_name(set_params: ParamSetter) -> str:
    """``module:function``, as a config names a setter."""
    return f"{getattr(set_params, '__module__', '?')}:{getattr(set_params, '__qualname__', set_params)}"


@functools.cache
def _attributes_after_reset(env_id: str) -> frozenset[str]:
    """The instance attributes an ``env_id`` environment has once reset (a setter may reset it)."""
    env = gym.make(env_id, disable_env_checker=True).unwrapped
    try:
        env.reset(seed=0)
        return frozenset(vars(env))
    finally:
        env.close()


class LazyEnv:
    """One Gymnasium environment, created and reset on first use, with its last observation."""

    def __init__(self, env_id: str, row: dict[str, float], seed: int, set_params: ParamSetter):
        self.env_id, self.row, self.seed, self.set_params = env_id, row, seed, set_params
        self._env: gym.Env | None = None
        self._obs: np.ndarray | None = None

    def _ready(self) -> gym.Env:
        if self._env is None:
            try:
                env = gym.make(self.env_id, disable_env_checker=True).unwrapped
            except Exception as exc:
                raise blame(f"making environment {self.env_id!r}", exc) from None
            self._set_params(env)
            try:
                self._obs, _ = env.reset(seed=self.seed)
            except Exception as exc:
                raise blame(f"environment {self.env_id!r} (reset)", exc) from None
            self._env = env
        return self._env

    def _set_params(self, env: gym.Env) -> None:
        """Run the user's setter; one line naming its file and line when it fails, or when it sets an
        attribute the environment does not have (a misspelt parameter would otherwise do nothing)."""
        name, before = setter_name(self.set_params), set(vars(env))
        try:
            self.set_params(env, self.row)
        except Exception as exc:
            raise blame(f"setter {name}", exc) from None
        known = before | _attributes_after_reset(self.env_id)
        added = sorted(
            name
            for name in set(vars(env)) - known
            if not hasattr(type(env), name) and not name.startswith("_")  # a class constant, a property's storage
        )
        if added:
            close = difflib.get_close_matches(added[0], sorted(before), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserCodeError(f"setter {name} set {added[0]!r}, which {self.env_id} does not have{hint}")

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
        env = self._ready()
        try:
            self._obs, reward, terminated, _, _ = env.step(action)
        except Exception as exc:
            raise blame(f"environment {self.env_id!r} (step)", exc) from None
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
        solved_return=solved_return if solved_return is not None else spec.reward_threshold,
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
