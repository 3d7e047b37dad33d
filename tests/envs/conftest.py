"""Shared checks for the env tests: a batched family against Gymnasium's own environment."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest

from fedrl.envs import base


def _compare_with_gymnasium(family, gym_id, sample_action, n_clients=2, n_envs=3, n_steps=400, seed=0):
    """Step ``family`` at heterogeneity 0 and one Gymnasium env per (client, env) slot with the
    same actions, copying the batched state into each Gymnasium env before every step, so each
    transition (those right after an auto-reset included) starts from the same state.
    Returns the number of finished episodes."""
    rng = np.random.default_rng(seed)
    params = base.sample_params(family, n_clients, heterogeneity=0.0, seed=seed)
    state, _ = base.reset(family, params, n_envs, rng)
    slots = list(itertools.product(range(n_clients), range(n_envs)))
    envs = {slot: gym.make(gym_id).unwrapped for slot in slots}
    for env in envs.values():
        env.reset(seed=seed)
    episodes = 0
    for _ in range(n_steps):
        action = sample_action(rng, (n_clients, n_envs))
        result = base.step(family, params, state, action, rng)
        done = result.terminated | result.truncated
        for (c, e), env in envs.items():
            env.state = np.array([field[c, e] for field in state.physics])
            obs, reward, terminated, _, _ = env.step(action[c, e])
            np.testing.assert_allclose(result.final_obs[c, e], obs, rtol=1e-6, atol=1e-6)
            assert result.reward[c, e] == pytest.approx(reward, rel=1e-6, abs=1e-6)
            assert result.terminated[c, e] == terminated
            if done[c, e]:
                env.reset()  # Gymnasium's CartPole refuses to go on after a terminal step
        episodes += int(done.sum())
        state = result.state
    return episodes


@pytest.fixture
def compare_with_gymnasium():
    """``compare_with_gymnasium(family, gym_id, sample_action, ...)``: see ``_compare_with_gymnasium``."""
    return _compare_with_gymnasium
