"""Synchronous advantage actor-critic (A2C) for a client batch.

Mnih et al., "Asynchronous Methods for Deep Reinforcement Learning", ICML 2016, in its
synchronous form (A2C, as in OpenAI Baselines and Stable-Baselines3): every client's ``n_envs``
environments take ``n_steps`` steps, then the client takes one gradient step on the policy
gradient with advantages ``R_t - V(s_t)``, the value loss and the entropy bonus. Environments
keep their episodes across rollouts and rounds, as in PPO. ``gae_lambda = 1`` gives the paper's
n-step returns (bootstrapped from the value after the last step); lower values give GAE.

The optimiser is RMSprop, as in the paper, with Stable-Baselines3's settings (alpha 0.99, eps
1e-5, lr 7e-4); ``optimizer: adam`` is the other choice. Both are element-wise, so every client
keeps its own statistics.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import Field

from fedrl.agents import client, distributions
from fedrl.agents.config import ActorCriticBase
from fedrl.agents.local import Budget, LocalResult, LocalTask
from fedrl.agents.onpolicy import train_on_policy
from fedrl.agents.rollout import Rollout, gae, per_client


class A2CConfig(ActorCriticBase):
    """A2C hyper-parameters (defaults as in Stable-Baselines3's A2C)."""

    name: Literal["a2c"] = "a2c"
    lr: float = Field(7e-4, gt=0, description="learning rate (also SCAFFOLD's local step size)")
    n_steps: int = Field(5, ge=1, description="steps per environment per rollout (one gradient step each)")
    gae_lambda: float = Field(1.0, ge=0, le=1, description="GAE lambda; 1 = n-step returns")
    norm_adv: bool = Field(False, description="normalise advantages per client and rollout")
    optimizer: Literal["rmsprop", "adam"] = Field("rmsprop", description="per-client RMSprop or Adam")


class Batch(NamedTuple):
    """One rollout laid out per client: ``(C, N, ...)`` with ``N = n_steps * n_envs``."""

    obs: torch.Tensor  # (C, N, obs_dim)
    actions: torch.Tensor  # (C, N) long or (C, N, A) float
    adv: torch.Tensor  # (C, N)
    returns: torch.Tensor  # (C, N)


def make_batch(rollout: Rollout, config: A2CConfig) -> Batch:
    """Advantages and returns by GAE (n-step returns at ``gae_lambda = 1``), per client."""
    adv, returns = gae(rollout, config.gamma, config.gae_lambda)
    return Batch(per_client(rollout.obs), per_client(rollout.actions), per_client(adv), per_client(returns))


def loss(
    task: LocalTask, config: A2CConfig, flat: torch.Tensor, batch: Batch, reference: dict | None = None
) -> torch.Tensor:
    """Per-client loss ``(C,)``: policy gradient + ``vf_coef`` value loss - ``ent_coef``
    entropy (+ ``kl_coef`` KL to the round-start policy), each a mean over the client's samples."""
    heads = task.net.heads(task.net.unpack(flat), batch.obs)
    adv = batch.adv
    if config.norm_adv:
        adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
    pg = -(adv * distributions.log_prob(heads, batch.actions)).mean(1)
    v_loss = 0.5 * (heads.value - batch.returns).pow(2).mean(1)
    ent = distributions.entropy(heads).mean(1)
    total = pg + config.vf_coef * v_loss - config.ent_coef * ent
    if config.kl_coef > 0:
        total = total + config.kl_coef * client.reference_kl(task.net, reference, heads, batch.obs).mean(1)
    return total


def train(config: A2CConfig, task: LocalTask, budget: Budget) -> LocalResult:
    """One gradient step per ``n_steps`` rollout until every client has spent ``budget``."""

    def improve(start: client.Start, optimizer, rollout: Rollout) -> tuple[torch.Tensor, int]:
        step_loss = loss(task, config, start.flat, make_batch(rollout, config), start.reference)
        start.terms.apply(optimizer, start.flat, step_loss.sum(), config.max_grad_norm)
        return step_loss.detach(), 1

    return train_on_policy(config, task, budget, improve, config.optimizer)
