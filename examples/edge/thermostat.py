"""A building thermostat as a Gymnasium environment: the kind of code a device owner writes.

Each device runs this file from its own folder (`fedrl client --env thermostat:make_env --env-dir
examples/edge`); the server never sees it. One step is ten minutes of one room's day: the heater
runs off, at half or at full power, the room loses heat through its walls to the outside air,
which swings over the day, and the reward is minus the distance to the setpoint (degrees C)
minus the energy used (kWh, at `energy_price`). Rooms differ in insulation, heater power and
climate: the non-IID fleet.

`bang_bang` is the hand-written controller a learned policy has to beat.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

STEP_H = 10 / 60  # ten minutes
STEPS_PER_DAY = 144
POWER_LEVELS = (0.0, 0.5, 1.0)


class Thermostat(gym.Env):
    """One room: observation (temperature error / 5, outside air vs setpoint / 20, time of day as
    sine and cosine), actions 0 (off), 1 (half), 2 (full)."""

    def __init__(
        self,
        loss_per_h: float = 0.12,
        heater_c_per_h: float = 4.0,
        heater_kw: float = 2.0,
        outside_mean_c: float = 5.0,
        setpoint_c: float = 21.0,
        energy_price: float = 0.3,
    ) -> None:
        self.loss, self.gain, self.kw = loss_per_h, heater_c_per_h, heater_kw
        self.outside_mean, self.setpoint, self.price = outside_mean_c, setpoint_c, energy_price
        self.observation_space = gym.spaces.Box(-10.0, 10.0, shape=(4,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(POWER_LEVELS))
        self.temperature, self.step_index = setpoint_c, 0

    def _outside(self) -> float:
        hour = self.step_index * STEP_H
        return self.outside_mean + 6.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)

    def _obs(self) -> np.ndarray:
        phase = 2 * math.pi * (self.step_index % STEPS_PER_DAY) / STEPS_PER_DAY
        return np.array(
            [
                (self.temperature - self.setpoint) / 5.0,
                (self._outside() - self.setpoint) / 20.0,
                math.sin(phase),
                math.cos(phase),
            ],
            dtype=np.float32,
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a day at midnight, within two degrees of the setpoint."""
        super().reset(seed=seed)
        self.temperature = self.setpoint + float(self.np_random.uniform(-2.0, 2.0))
        self.step_index = 0
        return self._obs(), {}

    def step(self, action):
        """Ten minutes of heating at the chosen level."""
        power = POWER_LEVELS[int(action)]
        drift = -self.loss * (self.temperature - self._outside()) + self.gain * power
        self.temperature += STEP_H * drift + float(self.np_random.normal(0.0, 0.05))
        self.step_index += 1
        reward = -abs(self.temperature - self.setpoint) - self.price * self.kw * power * STEP_H
        truncated = self.step_index >= STEPS_PER_DAY
        return self._obs(), float(reward), False, truncated, {}


def make_env(**kwargs: float) -> Thermostat:
    """The factory `fedrl client --env thermostat:make_env --env-kwargs '{...}'` calls."""
    return Thermostat(**kwargs)


def bang_bang(obs: np.ndarray, band_c: float = 0.5) -> int:
    """The hand-written controller: full power below the setpoint's band, off above it, half inside."""
    error = float(obs[0]) * 5.0
    return 2 if error < -band_c else 0 if error > band_c else 1
