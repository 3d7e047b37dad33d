"""The family-independent machinery of ``fedrl.envs.base``, exercised on CartPole."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedrl.envs import base
from fedrl.envs.cartpole import CARTPOLE


def _rollout(family, params, n_envs, seed, n_steps):
    rng = np.random.default_rng(seed)
    state, obs = base.reset(family, params, n_envs, rng)
    out = [obs]
    for i in range(n_steps):
        result = base.step(family, params, state, np.full((params.shape[0], n_envs), i % 2), rng)
        state = result.state
        out += [result.obs, result.reward, result.final_obs]
    return out


def test_heterogeneity_zero_gives_standard_rows():
    params = base.sample_params(CARTPOLE, 50, 0.0, seed=3)
    np.testing.assert_array_equal(params, np.tile(CARTPOLE.standard_params, (50, 1)))


def test_heterogeneity_one_spans_ranges():
    params = base.sample_params(CARTPOLE, 200, 1.0, seed=0)
    length = CARTPOLE.column(params, "length")
    assert length.min() < 0.2 and length.max() > 0.8
    for i, r in enumerate(CARTPOLE.param_ranges):
        assert r.low <= params[:, i].min() and params[:, i].max() <= r.high


def test_heldout_clients_differ_from_trained():
    trained = base.sample_params(CARTPOLE, 20, 1.0, seed=0)
    heldout = base.heldout_params(CARTPOLE, 20, 1.0, seed=0)
    assert not np.isin(heldout, trained).any()
    np.testing.assert_array_equal(heldout, base.heldout_params(CARTPOLE, 20, 1.0, seed=0))


def test_bad_heterogeneity_rejected():
    with pytest.raises(ValueError, match="heterogeneity"):
        base.sample_params(CARTPOLE, 4, 1.5, seed=0)


def test_params_from_rows():
    params = base.params_from_rows(CARTPOLE, [{}, {"length": 0.2}])
    assert params[0].tolist() == CARTPOLE.standard_params.tolist()
    assert CARTPOLE.column(params, "length")[:, 0].tolist() == [0.5, 0.2]
    with pytest.raises(ValueError, match="unknown cartpole parameter 'lenght'.*allowed: length"):
        base.params_from_rows(CARTPOLE, [{"lenght": 0.2}])


def test_termination_auto_reset():
    # Always pushing right topples the pole within a few dozen steps.
    params = base.sample_params(CARTPOLE, 1, 0.0, seed=0)
    rng = np.random.default_rng(0)
    state, _ = base.reset(CARTPOLE, params, 1, rng)
    push = np.ones((1, 1), dtype=np.int64)
    for n in range(1, 100):
        result = base.step(CARTPOLE, params, state, push, rng)
        if result.terminated[0, 0]:
            steps = n  # the step that toppled the pole
            break
        state = result.state
    assert result.reward[0, 0] == 1.0 and not result.truncated[0, 0]
    assert abs(result.final_obs[0, 0, 2]) > 12 * 2 * np.pi / 360  # the terminal obs: pole fallen
    assert np.abs(result.obs[0, 0]).max() <= 0.05  # a fresh episode's first obs
    assert result.state.t[0, 0] == 0 and state.t[0, 0] == steps - 1
    after = base.step(CARTPOLE, params, result.state, push, rng)
    assert after.state.t[0, 0] == 1 and not after.terminated[0, 0]
    np.testing.assert_array_equal(after.final_obs, after.obs)  # not done: the two agree


def test_truncation_at_time_limit():
    short = dataclasses.replace(CARTPOLE, time_limit=5)
    params = base.sample_params(short, 2, 0.0, seed=0)
    rng = np.random.default_rng(0)
    state, _ = base.reset(short, params, 3, rng)
    for i in range(5):
        result = base.step(short, params, state, np.full((2, 3), i % 2), rng)
        assert not result.terminated.any()
        np.testing.assert_array_equal(result.truncated, np.full((2, 3), i == 4))
        state = result.state
    assert (state.t == 0).all()
    assert not np.array_equal(result.obs, result.final_obs)


def test_same_seed_same_trajectory():
    params = base.sample_params(CARTPOLE, 3, 1.0, seed=1)
    first, second = _rollout(CARTPOLE, params, 4, 7, 60), _rollout(CARTPOLE, params, 4, 7, 60)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = _rollout(CARTPOLE, params, 4, 8, 60)
    assert not np.array_equal(first[0], other[0])


def test_client_slicing_and_arrays_round_trip():
    params = base.sample_params(CARTPOLE, 4, 1.0, seed=0)
    state, _ = base.reset(CARTPOLE, params, 2, np.random.default_rng(0))
    state = base.step(CARTPOLE, params, state, np.ones((4, 2), dtype=np.int64), np.random.default_rng(1)).state
    rows = np.array([1, 3])
    part = base.take_clients(state, rows)
    assert part.t.shape == (2, 2) and part.physics.x.shape == (2, 2)
    moved = part._replace(t=part.t + 10)
    merged = base.put_clients(state, rows, moved)
    np.testing.assert_array_equal(merged.t[rows], state.t[rows] + 10)
    np.testing.assert_array_equal(merged.t[[0, 2]], state.t[[0, 2]])
    restored = base.state_from_arrays(CARTPOLE, params, base.state_to_arrays(state))
    for a, b in zip((*restored.physics, restored.t), (*state.physics, state.t)):
        np.testing.assert_array_equal(a, b)
