"""The batched MountainCar family against Gymnasium's MountainCar-v0, transition by transition."""

from __future__ import annotations

import numpy as np

from fedrl.envs import base
from fedrl.envs.mountaincar import MOUNTAINCAR


def test_matches_gymnasium_mountaincar(compare_with_gymnasium):
    episodes = compare_with_gymnasium(
        MOUNTAINCAR, "MountainCar-v0", lambda rng, shape: rng.integers(0, 3, size=shape), n_steps=420
    )
    assert episodes == 2 * 2 * 3  # random driving never reaches the flag: all truncated


def test_energy_pumping_reaches_goal_and_terminates():
    # Push in the direction of motion: the textbook policy that climbs the hill.
    params = base.sample_params(MOUNTAINCAR, 2, 0.0, seed=0)
    rng = np.random.default_rng(1)
    state, obs = base.reset(MOUNTAINCAR, params, 4, rng)
    for _ in range(MOUNTAINCAR.time_limit):
        result = base.step(MOUNTAINCAR, params, state, np.where(obs[..., 1] >= 0, 2, 0), rng)
        if result.terminated.any():
            break
        state, obs = result.state, result.obs
    c, e = np.argwhere(result.terminated)[0]
    assert result.final_obs[c, e, 0] >= 0.5 and not result.truncated[c, e]


def test_left_wall_stops_the_car():
    params = base.sample_params(MOUNTAINCAR, 1, 0.0, seed=0)
    physics = MOUNTAINCAR.init_state(params, 1, np.random.default_rng(0))
    physics = physics._replace(position=np.full((1, 1), -1.19), velocity=np.full((1, 1), -0.05))
    new, _, _ = MOUNTAINCAR.transition(params, physics, np.zeros((1, 1), dtype=np.int64), None)
    assert new.position[0, 0] == -1.2 and new.velocity[0, 0] == 0.0
