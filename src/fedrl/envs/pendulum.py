"""Heterogeneous Pendulum: Gymnasium's ``Pendulum-v1`` swing-up with per-client physics.

Dynamics, reward and reset distribution are those of Gymnasium's ``Pendulum-v1`` (itself the
classic inverted-pendulum swing-up, e.g. Doya, "Reinforcement Learning in Continuous Time and
Space", Neural Computation 2000): semi-implicit Euler with ``dt = 0.05``, angular speed clipped
to 8 rad/s, reward ``-(angle_normalize(th)^2 + 0.1 thdot^2 + 0.001 u^2)``, no terminal state and
a 200-step limit. Bob mass, rod length, gravity and the torque limit are set per client.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedrl.envs.base import Continuous, EnvFamily, ParamRange

DT = 0.05
MAX_SPEED = 8.0


class PendulumPhysics(NamedTuple):
    """Angle ``th`` (0 is upright) and angular velocity ``thdot``, each ``(C, E)`` float64."""

    th: np.ndarray
    thdot: np.ndarray


PARAM_RANGES = (
    ParamRange("mass", 1.0, 0.5, 1.5, "mass of the pendulum bob (kg)"),
    ParamRange("length", 1.0, 0.5, 1.5, "length of the rod (m)"),
    ParamRange("gravity", 10.0, 8.0, 12.0, "gravitational acceleration (m/s^2)"),
    ParamRange("max_torque", 2.0, 1.5, 2.5, "largest torque the motor applies (N m); actions are clipped to it"),
)


def angle_normalize(x: np.ndarray) -> np.ndarray:
    """Wrap angles to ``[-pi, pi)``."""
    return ((x + np.pi) % (2 * np.pi)) - np.pi


def init_state(params: np.ndarray, n_envs: int, rng: np.random.Generator) -> PendulumPhysics:
    """Angle uniform on ``[-pi, pi]`` and angular velocity uniform on ``[-1, 1]``, as in Gymnasium."""
    shape = (params.shape[0], n_envs)
    return PendulumPhysics(rng.uniform(-np.pi, np.pi, size=shape), rng.uniform(-1.0, 1.0, size=shape))


def transition(params: np.ndarray, s: PendulumPhysics, action: np.ndarray, rng: np.random.Generator):
    """One step of the pendulum; ``action`` is the torque, shaped ``(C, E, 1)`` or ``(C, E)``."""
    m, length, g, max_torque = (params[:, i, None] for i in range(4))
    u = np.clip(np.asarray(action, dtype=np.float64).reshape(s.th.shape), -max_torque, max_torque)
    costs = angle_normalize(s.th) ** 2 + 0.1 * s.thdot**2 + 0.001 * u**2
    thdot = s.thdot + (3 * g / (2 * length) * np.sin(s.th) + 3.0 / (m * length**2) * u) * DT
    thdot = np.clip(thdot, -MAX_SPEED, MAX_SPEED)
    new = PendulumPhysics(th=s.th + thdot * DT, thdot=thdot)
    return new, -costs, np.zeros(s.th.shape, dtype=bool)


def observe(params: np.ndarray, s: PendulumPhysics) -> np.ndarray:
    """``(cos th, sin th, thdot)`` as float32 ``(C, E, 3)``."""
    return np.stack([np.cos(s.th), np.sin(s.th), s.thdot], axis=-1).astype(np.float32)


PENDULUM = EnvFamily(
    name="pendulum",
    description="Swing a pendulum up and hold it (continuous torque); Gymnasium Pendulum-v1 dynamics.",
    param_ranges=PARAM_RANGES,
    obs_dim=3,
    action_space=Continuous(dim=1, bound_param="max_torque"),
    time_limit=200,
    solved_return=-200.0,
    init_state=init_state,
    transition=transition,
    observe=observe,
    # from benchmarks/family_defaults.py (docs/benchmarks.md): the learner's gamma of 0.99 plateaus near -260
    learner_defaults={"ppo": {"gamma": 0.98, "n_envs": 8, "n_steps": 128, "epochs": 10, "minibatches": 8}},
)
