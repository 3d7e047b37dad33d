"""The air-quality sensing family: a sensible heuristic beats the trivial policies, the
battery and reporting rules hold, and runs are reproducible."""

from __future__ import annotations

import numpy as np

from fedrl.envs import base
from fedrl.envs.airquality import AIRQUALITY, SAMPLE, SLEEP, TRANSMIT, hand_policy


def _mean_episode_return(policy, n_envs=32, seed=0):
    params = base.sample_params(AIRQUALITY, 2, 0.0, seed=0)
    rng = np.random.default_rng(seed)
    state, obs = base.reset(AIRQUALITY, params, n_envs, rng)
    running, finished = np.zeros((2, n_envs)), []
    for _ in range(AIRQUALITY.time_limit):
        result = base.step(AIRQUALITY, params, state, policy(obs), rng)
        running += result.reward
        done = result.terminated | result.truncated
        finished += running[done].tolist()
        running[done] = 0.0
        state, obs = result.state, result.obs
    return float(np.mean(finished))


def _state_at_noon(**fields):
    params = base.sample_params(AIRQUALITY, 1, 0.0, seed=0)
    physics = AIRQUALITY.init_state(params, 1, np.random.default_rng(0))
    physics = physics._replace(clock=np.full((1, 1), 72), **{k: np.full((1, 1), v) for k, v in fields.items()})
    return params, physics


def test_hand_policy_beats_sleeping_and_always_transmitting():
    hand = _mean_episode_return(hand_policy)
    sleep = _mean_episode_return(lambda obs: np.full(obs.shape[:2], SLEEP))
    transmit = _mean_episode_return(lambda obs: np.full(obs.shape[:2], TRANSMIT))
    assert sleep == 0.0
    assert hand > AIRQUALITY.solved_return - 2.0 > sleep
    assert transmit < -10.0  # the battery runs flat within a couple of hours


def test_empty_battery_terminates_with_penalty():
    params, physics = _state_at_noon(battery=0.02)
    state = base.EnvState(physics, np.full((1, 1), 7))
    result = base.step(AIRQUALITY, params, state, np.full((1, 1), TRANSMIT), np.random.default_rng(0))
    assert result.terminated[0, 0] and not result.truncated[0, 0]
    assert result.reward[0, 0] <= -10.0
    assert result.final_obs[0, 0, 2] == 0.0 and result.state.t[0, 0] == 0
    assert 0.5 <= result.obs[0, 0, 2] <= 0.8  # the fresh episode's battery


def test_prompt_report_rewarded_once_and_false_alarm_penalised():
    params, physics = _state_at_noon(battery=0.9, excess=40.0, age=0)
    rng = np.random.default_rng(0)
    transmit = np.full((1, 1), TRANSMIT)
    physics, first, _ = AIRQUALITY.transition(params, physics, transmit, rng)
    physics, second, _ = AIRQUALITY.transition(params, physics, transmit, rng)
    energy = 2.0 * (0.01 + 0.04)
    np.testing.assert_allclose(first[0, 0], 5.0 - energy)
    np.testing.assert_allclose(second[0, 0], -energy)
    _, quiet, _ = AIRQUALITY.transition(params, physics._replace(excess=np.zeros((1, 1))), transmit, rng)
    np.testing.assert_allclose(quiet[0, 0], -0.5 - energy)


def test_sampling_updates_the_reading():
    params, physics = _state_at_noon(excess=60.0, reading=10.0)
    obs = AIRQUALITY.observe(params, physics)
    assert obs[0, 0, 5] == 0.0
    slept, _, _ = AIRQUALITY.transition(params, physics, np.full((1, 1), SLEEP), np.random.default_rng(0))
    assert AIRQUALITY.observe(params, slept)[0, 0, 3] == obs[0, 0, 3]
    sampled, _, _ = AIRQUALITY.transition(params, physics, np.full((1, 1), SAMPLE), np.random.default_rng(0))
    after = AIRQUALITY.observe(params, sampled)[0, 0]
    assert after[3] > 0.6 and after[4] == 0.0 and after[5] == 1.0


def test_reproducible_from_seed():
    params = base.sample_params(AIRQUALITY, 3, 1.0, seed=0)

    def rollout(seed):
        rng = np.random.default_rng(seed)
        state, obs = base.reset(AIRQUALITY, params, 4, rng)
        trace = [obs]
        for _ in range(100):
            result = base.step(AIRQUALITY, params, state, hand_policy(obs), rng)
            state, obs = result.state, result.obs
            trace += [obs, result.reward]
        return trace

    first, again, other = rollout(5), rollout(5), rollout(6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
