"""Trained-looking policies of three experiments and the torch network's answers, shared by the policy tests.

The actor head starts with gain 0.01, so fresh parameters give near-equal logits whose argmax
ties would hide mistakes: every parameter is perturbed, and the pendulum's head is scaled up so
that most of its means fall outside the action bound and clipping is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fedrl.agents import init_params
from fedrl.agents.distributions import greedy
from fedrl.agents.rollout import env_action
from fedrl.experiment.card import policy_card
from fedrl.experiment.loading import load_config
from fedrl.experiment.setup import Setup
from fedrl.policy.card import PolicyCard

N_OBS = 10_000
EXPERIMENTS = {
    "cartpole": ["env.family=cartpole"],
    "pendulum": ["env.family=pendulum"],
    "dqn": ["env.family=cartpole", "learner.name=dqn"],
}


@dataclass(frozen=True)
class Case:
    """One experiment's policy, observations, and what the torch network makes of them."""

    name: str
    setup: Setup
    params: np.ndarray
    card: PolicyCard
    obs: np.ndarray  # (N_OBS, obs_dim) float32
    actor_out: np.ndarray  # (N_OBS, A): the torch actor's logits, Q values or means
    action: np.ndarray  # (N_OBS,) indices or (N_OBS, A) clipped means, as an edge agent acts


def trained_looking(setup: Setup, name: str, seed: int = 1) -> np.ndarray:
    """Initial parameters, perturbed (and for the pendulum, with a head large enough to saturate the bound)."""
    rng = np.random.default_rng(seed)
    params = init_params(setup.net.shape, 0) + 0.2 * rng.standard_normal(setup.net.spec.dim).astype(np.float32)
    if name == "pendulum":
        params[setup.net.spec.slice("actor.2.weight")] *= 3
    return params


@torch.inference_mode()
def torch_policy(setup: Setup, params: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The actor outputs and greedy environment actions of the experiment's torch network."""
    weights = setup.net.unpack(torch.from_numpy(params).unsqueeze(0))
    heads = setup.net.policy(weights, torch.from_numpy(obs).unsqueeze(0))
    actions = env_action(setup.family, setup.family.standard_params[None], greedy(heads))
    return heads.actor[0].numpy(), actions[0]


def make_case(name: str) -> Case:
    """The case of experiment ``name`` (see ``EXPERIMENTS``)."""
    setup = Setup(load_config(None, EXPERIMENTS[name]))
    params = trained_looking(setup, name)
    obs = (2 * np.random.default_rng(2).standard_normal((N_OBS, setup.family.obs_dim))).astype(np.float32)
    actor_out, action = torch_policy(setup, params, obs)
    return Case(name, setup, params, policy_card(setup, params, version=7), obs, actor_out, action)


@pytest.fixture(scope="session")
def cases() -> dict[str, Case]:
    """Every case, built once a session."""
    return {name: make_case(name) for name in EXPERIMENTS}


@pytest.fixture(params=list(EXPERIMENTS))
def case(request, cases) -> Case:
    """Each case in turn."""
    return cases[request.param]
