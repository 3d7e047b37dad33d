"""The learners learn: one client (C = 1, an edge device) and a client batch."""

import numpy as np

from fedrl.agents import Budget, PolicyNet, PolicyShape, PPOConfig, ReinforceConfig, evaluate, init_params, make_task, train_local
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
    net, params, result = _train_rounds(config, family, env_params, 2, Budget(steps=256))
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
