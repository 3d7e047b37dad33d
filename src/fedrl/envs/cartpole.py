"""Heterogeneous CartPole: Barto, Sutton & Anderson (1983) with per-client physics.

Dynamics, reward and termination are those of Gymnasium's ``CartPole-v1`` (Euler
integration, reward 1 per step, failure beyond 12 degrees or 2.4 m, 500-step limit), with
pole half-length, pole mass, cart mass, gravity and push force set per client. The spread at
heterogeneity 1 covers the pole half-lengths 0.1 to 0.9 used by Jin et al., "Federated
Reinforcement Learning with Environment Heterogeneity", AISTATS 2022.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedrl.envs.base import Discrete, EnvFamily, ParamRange

TAU = 0.02
THETA_LIMIT = 12 * 2 * np.pi / 360
X_LIMIT = 2.4


class CartPolePhysics(NamedTuple):
    """Cart position and velocity, pole angle and angular velocity, each ``(C, E)`` float64."""

    x: np.ndarray
    x_dot: np.ndarray
    theta: np.ndarray
    theta_dot: np.ndarray


PARAM_RANGES = (
    ParamRange("length", 0.5, 0.1, 0.9, "half-length of the pole (m)"),
    ParamRange("masspole", 0.1, 0.05, 0.5, "mass of the pole (kg)"),
    ParamRange("masscart", 1.0, 0.5, 2.0, "mass of the cart (kg)"),
    ParamRange("gravity", 9.8, 7.0, 12.5, "gravitational acceleration (m/s^2)"),
    ParamRange("force_mag", 10.0, 7.0, 13.0, "magnitude of the push left or right (N)"),
)


def init_state(params: np.ndarray, n_envs: int, rng: np.random.Generator) -> CartPolePhysics:
    """Every state variable uniform on [-0.05, 0.05], as in Gymnasium."""
    s = rng.uniform(-0.05, 0.05, size=(4, params.shape[0], n_envs))
    return CartPolePhysics(*s)


def transition(params: np.ndarray, s: CartPolePhysics, action: np.ndarray, rng: np.random.Generator):
    """One Euler step of the cart-pole equations; derived masses are computed here, per client."""
    length, masspole, masscart, gravity, force_mag = (params[:, i, None] for i in range(5))
    total_mass = masspole + masscart
    polemass_length = masspole * length
    force = np.where(action == 1, force_mag, -force_mag)
    cos, sin = np.cos(s.theta), np.sin(s.theta)
    temp = (force + polemass_length * s.theta_dot**2 * sin) / total_mass
    theta_acc = (gravity * sin - cos * temp) / (length * (4.0 / 3.0 - masspole * cos**2 / total_mass))
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    new = CartPolePhysics(
        x=s.x + TAU * s.x_dot,
        x_dot=s.x_dot + TAU * x_acc,
        theta=s.theta + TAU * s.theta_dot,
        theta_dot=s.theta_dot + TAU * theta_acc,
    )
    terminated = (np.abs(new.x) > X_LIMIT) | (np.abs(new.theta) > THETA_LIMIT)
    reward = np.ones(s.x.shape, dtype=np.float32)
    return new, reward, terminated


def observe(params: np.ndarray, s: CartPolePhysics) -> np.ndarray:
    """The full state as float32 ``(C, E, 4)``."""
    return np.stack([s.x, s.x_dot, s.theta, s.theta_dot], axis=-1).astype(np.float32)


CARTPOLE = EnvFamily(
    name="cartpole",
    description="Balance a pole on a cart (discrete: push left/right); Gymnasium CartPole-v1 dynamics.",
    param_ranges=PARAM_RANGES,
    obs_dim=4,
    action_space=Discrete(2),
    time_limit=500,
    solved_return=475.0,
    init_state=init_state,
    transition=transition,
    observe=observe,
)
