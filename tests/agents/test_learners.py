"""The learners learn: one client (C = 1, an edge device) and a client batch."""

import numpy as np
import pytest
import safetensors.numpy

from fedrl.agents import (
    A2CConfig,
    Budget,
    DQNConfig,
    PolicyNet,
    PolicyShape,
    PPOConfig,
    ReinforceConfig,
    evaluate,
    init_client_state,
    init_params,
    make_net,
    make_task,
    train_local,
)
from fedrl.core.rows import from_arrays, to_arrays
from fedrl.envs import get_family, reset, sample_params


def _train_rounds(config, family, env_params, rounds, budget, seed=0):
    net = PolicyNet(PolicyShape(family.obs_dim, family.action_space, config.hidden))
    params = init_params(net.shape, seed)
    state, _ = reset(family, env_params, config.n_envs, np.random.default_rng(seed))
    for r in range(rounds):
        task = make_task(net, family, env_params, state, params, 0.0, np.random.default_rng([seed, r]))
        result = train_local(config, task, budget)
        state = result.env_state
        params = result.params.mean(axis=0)
    return net, params, result


def test_ppo_on_one_client_learns_cartpole():
    family = get_family("cartpole")
    env_params = family.standard_params[None, :]
    config = PPOConfig(lr=2.5e-3, n_envs=8, n_steps=64)
    net, after, result = _train_rounds(config, family, env_params, 12, Budget(steps=2048))
    before_return = evaluate(net, init_params(net.shape, 0), family, env_params, 8, seed=5).mean()
    after_return = evaluate(net, after, family, env_params, 8, seed=5).mean()
    assert result.params.shape == (1, net.spec.dim)
    assert result.env_steps.tolist() == [2048]
    assert after_return > 150 and after_return > 3 * before_return


def test_ppo_continuous_pendulum_runs_and_moves_log_std():
    family = get_family("pendulum")
    env_params = sample_params(family, 3, 1.0, seed=0)
    config = PPOConfig(n_envs=4, n_steps=32, lr=1e-3)
    net, _params, result = _train_rounds(config, family, env_params, 2, Budget(steps=256))
    assert np.isfinite(result.params).all()
    log_std = net.spec.unflatten(result.params)["actor.log_std"]
    assert log_std.shape == (3, 1) and np.any(log_std != 0)


def test_episode_budget_counts_finished_episodes():
    family = get_family("cartpole")
    env_params = sample_params(family, 2, 0.5, seed=0)
    _, _, result = _train_rounds(PPOConfig(n_envs=4, n_steps=16), family, env_params, 1, Budget(episodes=5))
    assert (result.episodes >= 5).all()
    assert (result.env_steps % 64 == 0).all()


def test_reinforce_improves_cartpole_and_counts_whole_episodes():
    family = get_family("cartpole")
    env_params = np.tile(family.standard_params, (2, 1))
    config = ReinforceConfig(lr=5e-3, n_envs=16)
    net, params, result = _train_rounds(config, family, env_params, 1, Budget(episodes=16 * 30))
    assert result.episodes.tolist() == [480, 480]
    before = evaluate(net, init_params(net.shape, 0), family, env_params, 8, seed=5).mean()
    after = evaluate(net, params, family, env_params, 8, seed=5).mean()
    assert after > 2 * before


def test_a2c_on_one_client_learns_cartpole():
    family = get_family("cartpole")
    env_params = family.standard_params[None, :]
    config = A2CConfig(n_envs=8)
    net, after, result = _train_rounds(config, family, env_params, 2, Budget(steps=4000))
    before_return = evaluate(net, init_params(net.shape, 0), family, env_params, 8, seed=5).mean()
    after_return = evaluate(net, after, family, env_params, 8, seed=5).mean()
    assert result.env_steps.tolist() == [4000]
    assert after_return > 100 and after_return > 3 * before_return


TINY = {
    "ppo": PPOConfig(n_envs=2, n_steps=8, hidden=(8,), federate="critic", kl_coef=0.1, ent_coef=0.01),
    "reinforce": ReinforceConfig(n_envs=2, hidden=(8,), federate="actor", kl_coef=0.1, ent_coef=0.01),
    "a2c": A2CConfig(n_envs=2, hidden=(8,), federate="critic", kl_coef=0.1, ent_coef=0.01),
    "dqn": DQNConfig(n_envs=2, hidden=(8,), buffer_size=16, batch_size=4, learning_starts=8),
}


@pytest.mark.parametrize("budget", [Budget(steps=32), Budget(episodes=2)], ids=["steps", "episodes"])
@pytest.mark.parametrize("n_clients", [1, 3])
@pytest.mark.parametrize("name", list(TINY))
def test_every_learner_runs_two_rounds_and_keeps_its_client_state_shapes(name, n_clients, budget):
    # Prepare: SCAFFOLD on, partial federation for the actor-critic learners
    config, family = TINY[name], get_family("cartpole")
    env_params = sample_params(family, n_clients, 1.0, seed=0)
    net = make_net(config, family)
    params = init_params(net.shape, 0)
    env_state, _ = reset(family, env_params, config.n_envs, np.random.default_rng(0))
    client_state = init_client_state(config, net, n_clients, uses_control_variates=True)
    layout = {k: (v.shape, v.dtype) for k, v in to_arrays(client_state).items()}
    control = np.zeros(net.spec.dim, np.float32)
    # Execute
    for r in range(2):
        task = make_task(
            net,
            family,
            env_params,
            env_state,
            params,
            0.0,
            np.random.default_rng(r),
            client_state=client_state,
            server_control=control,
        )
        result = train_local(config, task, budget)
        env_state, client_state = result.env_state, result.client_state
        params, control = result.params.mean(axis=0), control + result.control_delta.mean(axis=0)
    # Assert
    arrays = to_arrays(client_state)
    assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == layout
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "fiu" for v in arrays.values())
    restored = safetensors.numpy.load(safetensors.numpy.save(arrays))  # how the engine checkpoints it
    back = to_arrays(from_arrays(type(client_state), restored))
    assert back.keys() == arrays.keys() and all(np.array_equal(back[k], v, equal_nan=True) for k, v in arrays.items())
    assert result.params.shape == result.control_delta.shape == (n_clients, net.spec.dim)
    assert result.params.dtype == result.control_delta.dtype == np.float32
    assert np.isfinite(result.params).all() and result.loss.shape == (n_clients,)
    assert env_state.t.shape == (n_clients, config.n_envs)
    if budget.steps is not None:
        assert (result.env_steps >= 32).all()
    else:
        assert (result.episodes >= 2).all()
