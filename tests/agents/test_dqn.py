"""DQN: per-client replay rings, an exploration schedule that spans rounds, and learning CartPole."""

from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from fedrl.agents import Budget, DQNConfig, evaluate, init_client_state, init_params, make_net, make_task, train_local
from fedrl.agents.dqn import epsilon, sample, store, to_torch
from fedrl.agents.memory import ReplayArrays, empty_replay
from fedrl.core.rows import copy_rows, to_arrays
from fedrl.envs import get_family, reset


def _step_values(t, C=2, E=2):
    """Transition ``(client c, env e)`` of vector step ``t`` carries the number ``100 c + 10 t + e``."""
    v = 100.0 * np.arange(C)[:, None] + 10.0 * t + np.arange(E)[None, :]
    return torch.from_numpy(v.astype(np.float32))


def _store_step(buffer, t):
    v = _step_values(t)
    return store(
        buffer, v[..., None].repeat(1, 1, 3), v.long(), v, v[..., None].repeat(1, 1, 3) + 0.5, torch.zeros_like(v)
    )


def test_replay_ring_wraps_around_per_client():
    # Prepare: capacity 5, two clients with two envs each; client 1 starts writing at slot 3
    buffer = to_torch(empty_replay(2, 5, 3))
    buffer = replace(buffer, index=torch.tensor([0, 3]))
    # Execute: four vector steps = eight transitions per client
    for t in range(4):
        buffer = _store_step(buffer, t)
    # Assert: the ring holds the last five transitions of each client, at its own slots
    assert buffer.index.tolist() == [3, 1] and buffer.size.tolist() == [5, 5]
    assert buffer.reward[0].tolist() == [21.0, 30.0, 31.0, 11.0, 20.0]
    assert buffer.reward[1].tolist() == [131.0, 111.0, 120.0, 121.0, 130.0]
    np.testing.assert_array_equal(buffer.next_obs[:, :, 0], buffer.reward + 0.5)
    np.testing.assert_array_equal(buffer.action, buffer.reward.long())


def test_sampling_draws_only_from_a_clients_own_filled_slots():
    # Prepare: client 0 has stored one vector step, client 1 three (its ring is full)
    buffer = to_torch(empty_replay(2, 5, 3))
    buffer = _store_step(buffer, 0)
    other = _store_step(_store_step(_store_step(to_torch(empty_replay(2, 5, 3)), 0), 1), 2)
    names = [f.name for f in fields(ReplayArrays)]
    buffer = ReplayArrays(*(torch.stack([getattr(buffer, n)[0], getattr(other, n)[1]]) for n in names))
    # Execute
    batch = sample(buffer, 200, torch.Generator().manual_seed(0))
    # Assert
    assert set(batch.reward[0].tolist()) == {0.0, 1.0}
    assert set(batch.reward[1].tolist()) == {101.0, 110.0, 111.0, 120.0, 121.0}
    np.testing.assert_array_equal(batch.obs[..., 0], batch.reward)


def test_epsilon_decays_linearly_over_a_clients_total_steps():
    config = DQNConfig(exploration_steps=1000, eps_start=1.0, eps_end=0.1)
    np.testing.assert_allclose(epsilon(config, np.array([0, 250, 1000, 5000])), [1.0, 0.775, 0.1, 0.1])


def _cartpole(config, C, seed=0):
    family = get_family("cartpole")
    env_params = np.tile(family.standard_params, (C, 1))
    net = make_net(config, family)
    state, _ = reset(family, env_params, config.n_envs, np.random.default_rng(seed))
    return family, env_params, net, state


def test_step_count_and_replay_persist_across_rounds():
    # Prepare: learning starts after 300 of a client's env steps; rounds of 200
    config = DQNConfig(n_envs=4, learning_starts=300, exploration_steps=1000, buffer_size=256, hidden=(16, 16))
    family, env_params, net, env_state = _cartpole(config, C=2)
    params = init_params(net.shape, 0)
    client_state = given = init_client_state(config, net, 2, uses_control_variates=False)
    before = to_arrays(copy_rows(given))
    results = []
    # Execute
    for r in range(2):
        task = make_task(
            net, family, env_params, env_state, params, 0.0, np.random.default_rng(r), client_state=client_state
        )
        results.append(train_local(config, task, Budget(steps=200)))
        env_state, client_state = results[-1].env_state, results[-1].client_state
    # Assert: round 1 only explored; round 2 went on counting and learned once past 300
    first, second = results
    assert first.client_state.dqn.env_steps.tolist() == [200, 200]
    assert np.isnan(first.loss).all() and np.array_equal(first.params, np.broadcast_to(params, first.params.shape))
    assert second.client_state.dqn.env_steps.tolist() == [400, 400]
    assert np.isfinite(second.loss).all()
    assert second.client_state.dqn.replay.size.tolist() == [256, 256]
    assert second.client_state.dqn.replay.index.tolist() == [400 % 256] * 2
    after = to_arrays(given)  # the caller's state was never written
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_dqn_refuses_continuous_actions():
    with pytest.raises(ValueError, match="discrete"):
        make_net(DQNConfig(), get_family("pendulum"))


def test_dqn_on_one_client_learns_cartpole():
    # Prepare
    config = DQNConfig(
        n_envs=8,
        lr=1e-3,
        learning_starts=500,
        exploration_steps=2000,
        target_update_every=100,
        gradient_steps=4,
        hidden=(128, 128),
    )
    family, env_params, net, env_state = _cartpole(config, C=1)
    params = init_params(net.shape, 0)
    client_state = init_client_state(config, net, 1, uses_control_variates=False)
    # Execute: two rounds, the second one from the first's replay and counters
    for r in range(2):
        task = make_task(
            net, family, env_params, env_state, params, 0.0, np.random.default_rng(r), client_state=client_state
        )
        result = train_local(config, task, Budget(steps=2000))
        env_state, client_state, params = result.env_state, result.client_state, result.params[0]
    # Assert: well above a random policy (about 20)
    assert evaluate(net, params, family, env_params, 8, seed=5).mean() > 60
