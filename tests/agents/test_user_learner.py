"""A learner of the user's: fedrl's on-policy loop around their loss. Written as a user loss,
PPO's own loss trains exactly as the built-in PPO does, and a loss that returns the wrong shape
is named."""

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter

from fedrl.agents import (
    Budget,
    LearnerConfig,
    PPOConfig,
    init_client_state,
    make_net,
    make_task,
    register_loss,
    train_local,
)
from fedrl.core.errors import UserCodeError
from fedrl.envs import get_family, reset, sample_params

HYPER = {"lr": 0.0025, "n_envs": 4, "n_steps": 32, "epochs": 2, "minibatches": 2, "ent_coef": 0.01, "prox_mu": 0.1}


def ppo_as_a_users_loss(out, batch, options):
    clip = options["clip"]
    ratio = torch.exp(out.log_prob(batch.actions) - batch.logp)
    pg = torch.max(-batch.adv * ratio, -batch.adv * ratio.clamp(1 - clip, 1 + clip)).mean(1)
    v_loss = 0.5 * (out.value - batch.returns).pow(2).mean(1)
    return pg - options["ent_coef"] * out.entropy().mean(1) + 0.5 * v_loss


def _train(config, seed=0):
    family = get_family("cartpole")
    env_params = sample_params(family, 3, 1.0, seed)
    net = make_net(config, family)
    start = net.initial_params(seed)
    state, _ = reset(family, env_params, config.n_envs, np.random.default_rng(seed))
    client_state = init_client_state(config, net, 3, False)
    task = make_task(
        net, family, env_params, state, start, config.prox_mu, np.random.default_rng(seed), client_state=client_state
    )
    return train_local(config, task, Budget(steps=256))


def test_ppos_loss_as_a_users_loss_trains_exactly_as_ppo():
    register_loss("tests:ppo_loss", ppo_as_a_users_loss)
    theirs = TypeAdapter(LearnerConfig).validate_python(
        {"name": "tests:ppo_loss", "options": {"clip": 0.2, "ent_coef": 0.01}, **HYPER}
    )

    mine, reference = _train(theirs), _train(PPOConfig(**HYPER))

    assert type(theirs).__name__ == "UserLearnerConfig"
    np.testing.assert_array_equal(mine.params, reference.params)
    np.testing.assert_array_equal(mine.loss, reference.loss)
    assert not np.array_equal(mine.params[0], mine.params[1])


def test_a_loss_of_the_wrong_shape_is_named():
    register_loss("tests:scalar_loss", lambda out, batch, options: out.value.mean())
    config = TypeAdapter(LearnerConfig).validate_python({"name": "tests:scalar_loss", **HYPER})

    with pytest.raises(
        UserCodeError, match=r"learner tests:scalar_loss returned \(\); a loss returns one value per client, \(3,\)"
    ):
        _train(config)
