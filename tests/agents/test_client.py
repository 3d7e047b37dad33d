"""The client half of federation: partial federation, SCAFFOLD's control variates, the KL pull."""

import numpy as np
import pytest
import torch

from fedrl.agents import (
    A2CConfig,
    Budget,
    ClientState,
    DQNConfig,
    PPOConfig,
    ReinforceConfig,
    distributions,
    federated_mask,
    init_client_state,
    init_params,
    local_params,
    make_net,
    make_task,
    train_local,
)
from fedrl.core.scaffold import scaffold_client_control
from fedrl.envs import get_family, reset, sample_params


class Fleet:
    """A few clients of one family, their network, and one round of local training at a time."""

    def __init__(self, config, n_clients=2, family="cartpole", uses_control_variates=False):
        self.config = config
        self.family = get_family(family)
        self.env_params = sample_params(self.family, n_clients, 0.5, seed=0)
        self.net = make_net(config, self.family)
        self.params = init_params(self.net.shape, 0)
        self.env_state, _ = reset(self.family, self.env_params, config.n_envs, np.random.default_rng(0))
        self.client_state = init_client_state(config, self.net, n_clients, uses_control_variates)

    def train(self, params, client_state, budget, seed=0, server_control=None, config=None):
        task = make_task(
            self.net,
            self.family,
            self.env_params,
            self.env_state,
            params,
            0.0,
            np.random.default_rng(seed),
            client_state=client_state,
            server_control=server_control,
        )
        return train_local(config or self.config, task, budget)


def _towers(net, mask):
    names = {
        name.split(".")[0]
        for name, off, size in zip(net.spec.names, net.spec.offsets, net.spec.sizes)
        if mask[off : off + size].all()
    }
    return names


def test_federated_mask_selects_whole_towers():
    # Prepare
    family = get_family("pendulum")
    net = make_net(PPOConfig(), family)
    # Execute / Assert
    assert federated_mask(PPOConfig(), net).all()
    assert _towers(net, federated_mask(PPOConfig(federate="actor"), net)) == {"actor"}
    assert _towers(net, federated_mask(PPOConfig(federate="critic"), net)) == {"critic"}
    assert federated_mask(DQNConfig(), make_net(DQNConfig(), get_family("cartpole"))).all()


@pytest.mark.parametrize("federate", ["actor", "critic"])
def test_partial_federation_sends_zero_deltas_off_its_tower_and_keeps_the_personal_one(federate):
    # Prepare: a server that averages deltas, two clients, SCAFFOLD on
    fleet = Fleet(A2CConfig(federate=federate, hidden=(16, 16), lr=3e-3), uses_control_variates=True)
    mask = federated_mask(fleet.config, fleet.net)
    g0, budget = fleet.params, Budget(steps=160)
    # Execute: two rounds, the second from the first's client state
    first = fleet.train(g0, fleet.client_state, budget, server_control=np.zeros_like(g0))
    g1 = g0 + (first.params - g0).mean(axis=0)
    acting = local_params(fleet.config, fleet.net, g1, first.client_state, 2)
    second = fleet.train(g1, first.client_state, budget, seed=1, server_control=np.zeros_like(g0))
    fresh = fleet.train(g1, fleet.client_state, budget, seed=1, server_control=np.zeros_like(g0))
    # Assert: nothing leaves the client off the federated tower ...
    np.testing.assert_array_equal((first.params - g0)[:, ~mask], 0.0)
    np.testing.assert_array_equal(first.control_delta[:, ~mask], 0.0)
    assert np.abs(first.params - g0)[:, mask].max() > 0
    # ... the personal tower trained, and the next round acts with it
    personal = first.client_state.personal
    assert personal.shape == (2, int((~mask).sum())) and np.isfinite(personal).all()
    assert np.abs(personal - g0[~mask]).max() > 0
    np.testing.assert_array_equal(acting[:, ~mask], personal)
    np.testing.assert_array_equal(acting[:, mask], np.broadcast_to(g1[mask], (2, int(mask.sum()))))
    assert np.abs(second.client_state.personal - personal).max() > 0
    assert not np.array_equal(second.params, fresh.params)


def _by_hand_steps(config, result, budget):
    """The optimiser steps each learner takes, counted from its hyper-parameters."""
    if isinstance(config, PPOConfig):
        return budget.steps // (config.n_envs * config.n_steps) * config.epochs * config.minibatches
    if isinstance(config, A2CConfig):
        return budget.steps // (config.n_envs * config.n_steps)
    if isinstance(config, ReinforceConfig):
        return int(result.episodes[0]) // config.n_envs
    return budget.steps // (config.n_envs * config.train_freq) * config.gradient_steps


@pytest.mark.parametrize(
    "config, budget",
    [
        (PPOConfig(n_envs=2, n_steps=8, epochs=2, minibatches=2, hidden=(16, 16)), Budget(steps=32)),
        (ReinforceConfig(n_envs=2, hidden=(16, 16)), Budget(episodes=4)),
        (A2CConfig(n_envs=2, n_steps=4, hidden=(16, 16)), Budget(steps=40)),
        (
            DQNConfig(n_envs=2, learning_starts=0, batch_size=4, buffer_size=32, gradient_steps=2, hidden=(16, 16)),
            Budget(steps=20),
        ),
    ],
    ids=["ppo", "reinforce", "a2c", "dqn"],
)
def test_control_delta_is_option_two_with_the_learners_own_step_count(config, budget):
    # Prepare: server c and client c_i, small and random
    fleet = Fleet(config, uses_control_variates=True)
    rng = np.random.default_rng(1)
    c = (0.01 * rng.standard_normal(fleet.net.spec.dim)).astype(np.float32)
    c_i = (0.01 * rng.standard_normal((2, fleet.net.spec.dim))).astype(np.float32)
    # Execute
    result = fleet.train(fleet.params, ClientState(control=c_i), budget, server_control=c)
    plain = fleet.train(fleet.params, ClientState(control=c_i), budget, server_control=None)
    # Assert
    k = _by_hand_steps(config, result, budget)
    expected_c_i, expected_delta = scaffold_client_control(c_i, c, fleet.params, result.params, k, config.lr)
    np.testing.assert_allclose(result.control_delta, expected_delta, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.client_state.control, expected_c_i, rtol=1e-6, atol=1e-6)
    assert result.control_delta.shape == c_i.shape and result.control_delta.dtype == np.float32
    assert plain.control_delta is None and not np.array_equal(plain.params, result.params)


def _kl_to_global(fleet, params, result):
    obs = torch.from_numpy(reset(fleet.family, fleet.env_params, 256, np.random.default_rng(7))[1])
    net = fleet.net
    local = net.policy(net.unpack(torch.from_numpy(result.params)), obs)
    glob = net.policy(net.unpack(torch.from_numpy(params).expand(len(result.params), -1)), obs)
    return distributions.kl(local, glob).mean(1).numpy()


@pytest.mark.parametrize(
    "family, config",
    [
        ("cartpole", A2CConfig(n_envs=4, lr=3e-3, ent_coef=0.01, hidden=(16, 16))),
        ("pendulum", PPOConfig(n_envs=4, n_steps=16, lr=3e-3, hidden=(16, 16))),
    ],
)
def test_kl_coef_keeps_the_local_policy_closer_to_the_global_one(family, config):
    # Prepare
    fleet = Fleet(config, family=family)
    budget = Budget(steps=640)
    # Execute: the same training, without and with the KL pull
    free = fleet.train(fleet.params, {}, budget)
    pulled = fleet.train(fleet.params, {}, budget, config=config.model_copy(update={"kl_coef": 5.0}))
    # Assert
    kl_free, kl_pulled = _kl_to_global(fleet, fleet.params, free), _kl_to_global(fleet, fleet.params, pulled)
    assert (kl_free > 0).all()
    assert (kl_pulled < 0.5 * kl_free).all()
