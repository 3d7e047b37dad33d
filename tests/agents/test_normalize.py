"""Observation normalisation and reward scaling while clients train."""

import numpy as np
import pytest
import torch

from fedrl.agents import DQNConfig, PPOConfig, ReinforceConfig, init_params, make_net, make_task, train_local
from fedrl.agents.a2c import A2CConfig
from fedrl.agents.client import init_federation_state
from fedrl.agents.local import Budget
from fedrl.agents.normalize import NormalizeConfig, Normalizer, ObsScale, init_stats
from fedrl.agents.rollout import collect
from fedrl.core.moments import Moments
from fedrl.envs import get_family, reset, sample_params

BOTH = NormalizeConfig(obs=True, reward=True)


def _normalizer(config=BOTH, n_clients=2, n_envs=3, gamma=0.9, obs_dim=4):
    start = init_stats(config, obs_dim).broadcast(n_clients)
    return Normalizer(config, start, np.zeros((n_clients, n_envs)), gamma)


def test_observations_are_normalised_by_everything_each_client_has_seen_so_far():
    norm = _normalizer()
    rng = np.random.default_rng(0)
    batches = [rng.normal(5.0, 3.0, (2, 3, 4)).astype(np.float32) for _ in range(4)]
    for x in batches:
        out = norm.observe(x)
    seen = np.concatenate(batches, axis=1)  # (C, 12, 4)
    mean, std = seen.mean(1, keepdims=True), np.sqrt(seen.var(1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(out, np.clip((batches[-1] - mean) / std, -10, 10), rtol=1e-5, atol=1e-5)
    assert norm.seen.obs.count.tolist() == [12, 12]


def test_rewards_are_divided_by_the_running_deviation_of_the_discounted_return():
    """Stable-Baselines3's VecNormalize, worked step by step for one environment."""
    norm = _normalizer(n_clients=1, n_envs=1, gamma=0.9)
    rewards, dones = [1.0, 2.0, -1.0, 4.0], [False, True, False, False]
    ret, seen, expected = 0.0, [], []
    for r, d in zip(rewards, dones):
        ret = ret * 0.9 + r
        seen.append(ret)
        expected.append(r / np.sqrt(np.var(seen) + 1e-8))
        ret = 0.0 if d else ret
        got = norm.reward(np.array([[r]], np.float32), np.array([[d]]))
        np.testing.assert_allclose(got, [[np.clip(expected[-1], -10, 10)]], rtol=1e-5)
    assert norm.returns[0, 0] == pytest.approx(-1.0 * 0.9 + 4.0)


def test_a_fixed_scale_normalises_as_a_saved_policy_does():
    moments = Moments.of(np.random.default_rng(1).normal(2.0, 4.0, (50, 3)))
    scale = ObsScale.of(moments, clip=1.5)
    obs = np.array([[0.0, 2.0, 40.0]], np.float32)
    std = np.sqrt(moments.var.astype(np.float32) + np.float32(1e-8))
    np.testing.assert_array_equal(scale.apply(obs), np.clip((obs - moments.mean.astype(np.float32)) / std, -1.5, 1.5))


def test_a_rollout_holds_normalised_observations_and_counts_each_one_once():
    family = get_family("cartpole")
    config = PPOConfig(n_envs=3, n_steps=8, normalize=BOTH)
    net = make_net(config, family)
    env_params = sample_params(family, 2, 1.0, seed=0)
    state, _ = reset(family, env_params, 3, np.random.default_rng(1))
    norm = _normalizer(n_clients=2, n_envs=3, gamma=config.gamma)
    flat = torch.from_numpy(np.tile(init_params(net.shape, 2), (2, 1)))
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(3)
    _, state = collect(net, flat, family, env_params, state, 8, config.gamma, gen, rng, norm=norm)
    second, _ = collect(net, flat, family, env_params, state, 8, config.gamma, gen, rng, norm=norm)
    assert norm.seen.obs.count.tolist() == [48, 48]  # 2 rollouts x 8 steps x 3 envs, none twice
    assert abs(float(second.obs.mean())) < 1.0 and float(second.obs.abs().max()) <= 10.0
    assert norm.seen.returns.count.tolist() == [48, 48]


LEARNERS = [
    PPOConfig(n_envs=4, n_steps=16),
    A2CConfig(n_envs=4),
    ReinforceConfig(n_envs=4),
    DQNConfig(n_envs=4, learning_starts=0),
]


@pytest.mark.parametrize("learner", LEARNERS, ids=lambda c: c.name)
def test_every_learner_reports_what_each_client_observed(learner):
    family = get_family("cartpole")
    config = learner.model_copy(update={"normalize": BOTH})
    net = make_net(config, family)
    n = 2
    env_params = sample_params(family, n, 1.0, seed=0)
    state, _ = reset(family, env_params, config.n_envs, np.random.default_rng(1))
    task = make_task(
        net,
        family,
        env_params,
        state,
        init_params(net.shape, 2),
        0.0,
        np.random.default_rng(3),
        client_state=init_federation_state(config, net, n, False),
        norm=init_stats(config.normalize, family.obs_dim),
    )
    result = train_local(config, task, Budget(steps=128))
    assert result.norm.obs.count.min() >= 128
    assert np.isfinite(result.params).all() and np.isfinite(result.norm.obs.mean).all()
    assert result.client_state.returns.shape == (n, config.n_envs)


def test_a_task_for_a_normalising_learner_needs_the_fleets_statistics():
    family = get_family("cartpole")
    config = PPOConfig(n_envs=2, n_steps=8, normalize=NormalizeConfig(obs=True))
    net = make_net(config, family)
    env_params = sample_params(family, 1, 1.0, seed=0)
    state, _ = reset(family, env_params, 2, np.random.default_rng(1))
    task = make_task(net, family, env_params, state, init_params(net.shape, 2), 0.0, np.random.default_rng(3))
    with pytest.raises(ValueError, match="normalisation statistics"):
        train_local(config, task, Budget(steps=16))
