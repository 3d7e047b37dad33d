"""Heterogeneous MountainCar: Moore (1990) via Gymnasium's ``MountainCar-v0``, per-client physics.

Dynamics, reward and termination are those of Gymnasium's ``MountainCar-v0``: velocity
``v += (a - 1) * force - cos(3 x) * gravity`` clipped to 0.07, position clipped to
``[-1.2, 0.6]`` with the velocity zeroed at the left wall, reward -1 per step, success when the
car reaches position 0.5 with non-negative velocity, and a 200-step limit. The engine force and
gravity are set per client (A. Moore, "Efficient Memory-based Learning for Robot Control",
PhD thesis, Cambridge, 1990; Sutton & Barto, "Reinforcement Learning", 2nd ed., Example 10.1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedrl.envs.base import Discrete, EnvFamily, ParamRange

MIN_POSITION = -1.2
MAX_POSITION = 0.6
MAX_SPEED = 0.07
GOAL_POSITION = 0.5
GOAL_VELOCITY = 0.0


class MountainCarPhysics(NamedTuple):
    """Car position and velocity, each ``(C, E)`` float64."""

    position: np.ndarray
    velocity: np.ndarray


PARAM_RANGES = (
    ParamRange("force", 0.001, 0.0008, 0.0012, "acceleration of the engine per step"),
    ParamRange("gravity", 0.0025, 0.002, 0.003, "pull of the slope per step"),
)


def init_state(params: np.ndarray, n_envs: int, rng: np.random.Generator) -> MountainCarPhysics:
    """Position uniform on ``[-0.6, -0.4]`` at rest, as in Gymnasium."""
    shape = (params.shape[0], n_envs)
    return MountainCarPhysics(rng.uniform(-0.6, -0.4, size=shape), np.zeros(shape))


def transition(params: np.ndarray, s: MountainCarPhysics, action: np.ndarray, rng: np.random.Generator):
    """One step of the car; ``action`` is 0 (push left), 1 (no push) or 2 (push right), ``(C, E)``."""
    force, gravity = params[:, 0, None], params[:, 1, None]
    # Same operation order as Gymnasium, so results agree to the last bit.
    velocity = s.velocity + ((action - 1) * force + np.cos(3 * s.position) * (-gravity))
    velocity = np.clip(velocity, -MAX_SPEED, MAX_SPEED)
    position = np.clip(s.position + velocity, MIN_POSITION, MAX_POSITION)
    velocity = np.where((position == MIN_POSITION) & (velocity < 0), 0.0, velocity)
    terminated = (position >= GOAL_POSITION) & (velocity >= GOAL_VELOCITY)
    reward = np.full(s.position.shape, -1.0, dtype=np.float32)
    return MountainCarPhysics(position, velocity), reward, terminated


def observe(params: np.ndarray, s: MountainCarPhysics) -> np.ndarray:
    """``(position, velocity)`` as float32 ``(C, E, 2)``."""
    return np.stack([s.position, s.velocity], axis=-1).astype(np.float32)


def hand_policy(obs: np.ndarray) -> np.ndarray:
    """The classic reference controller: push in the direction the car moves (right at rest), which
    pumps energy into the swing until it tops the hill.

    Takes observations ``(..., 2)`` and returns int64 actions ``(...)``: 0 (left) or 2 (right).
    """
    return np.where(obs[..., 1] < 0, 0, 2).astype(np.int64)


MOUNTAINCAR = EnvFamily(
    name="mountaincar",
    description="Drive an underpowered car up a hill (discrete: left/none/right); Gymnasium MountainCar-v0 dynamics.",
    param_ranges=PARAM_RANGES,
    obs_dim=2,
    action_space=Discrete(3),
    time_limit=200,
    solved_return=-110.0,
    init_state=init_state,
    transition=transition,
    observe=observe,
    # from benchmarks/family_defaults.py (docs/benchmarks.md): without normalisation PPO never leaves -200
    learner_defaults={
        "ppo": {
            "n_envs": 16,
            "n_steps": 64,
            "gae_lambda": 0.98,
            "ent_coef": 0.01,
            "epochs": 10,
            "minibatches": 8,
            "normalize": {"obs": True, "reward": True},
        }
    },
)
