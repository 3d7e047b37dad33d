"""Proximal Policy Optimization for a client batch (Schulman et al., 2017).

Clipped surrogate objective, GAE, value loss and entropy bonus, advantages normalised per
client; follows CleanRL's ``ppo.py`` closely, with one more batch axis: clients. Each
client's loss is a mean over its own samples and the batch loss is their sum, so a client's
gradient never depends on another client's data. With ``kl_coef`` the loss gains
``kl_coef * KL(pi_local || pi_global)``, an exploration pull toward the round's global policy.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fedrl.agents import client, distributions
from fedrl.agents.config import ActorCriticBase
from fedrl.agents.local import Budget, LocalResult, LocalTask
from fedrl.agents.onpolicy import train_on_policy
from fedrl.agents.rollout import Rollout, gae


class PPOConfig(ActorCriticBase):
    """PPO hyper-parameters (names as in CleanRL)."""

    name: Literal["ppo"] = "ppo"
    n_steps: int = Field(64, ge=1, description="steps per environment per rollout")
    epochs: int = Field(4, ge=1, description="passes over each rollout")
    minibatches: int = Field(4, ge=1, description="minibatches per epoch")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    clip_coef: float = Field(0.2, gt=0, description="surrogate clipping coefficient")
    norm_adv: bool = Field(True, description="normalise advantages per client and minibatch")


def _flatten_time(x: torch.Tensor) -> torch.Tensor:
    """``(T, C, E, ...)`` -> ``(C, T*E, ...)``."""
    x = x.transpose(0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _minibatch_loss(
    task: LocalTask,
    config: PPOConfig,
    flat: torch.Tensor,
    batch: dict,
    idx: torch.Tensor,
    reference: dict | None = None,
) -> torch.Tensor:
    """Per-client loss ``(C,)`` on samples ``idx``; ``reference`` is the frozen KL policy."""
    obs = batch["obs"][:, idx]
    heads = task.net.heads(task.net.unpack(flat), obs)
    new_logp = distributions.log_prob(heads, batch["actions"][:, idx])
    ratio = torch.exp(new_logp - batch["logp"][:, idx])
    adv = batch["adv"][:, idx]
    if config.norm_adv:
        adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)).mean(1)
    v_loss = 0.5 * (heads.value - batch["returns"][:, idx]).pow(2).mean(1)
    ent = distributions.entropy(heads).mean(1)
    loss = pg - config.ent_coef * ent + config.vf_coef * v_loss
    if config.kl_coef > 0:
        loss = loss + config.kl_coef * client.reference_kl(task.net, reference, heads, obs).mean(1)
    return loss


def improve(task: LocalTask, config: PPOConfig, start: client.Start, optimizer, rollout: Rollout, gen):
    """Epochs of minibatch steps on one rollout: mean loss ``(C,)`` and the number of steps."""
    adv, returns = gae(rollout, config.gamma, config.gae_lambda)
    batch = {
        "obs": _flatten_time(rollout.obs),
        "actions": _flatten_time(rollout.actions),
        "logp": _flatten_time(rollout.logp),
        "adv": _flatten_time(adv),
        "returns": _flatten_time(returns),
    }
    n = batch["logp"].shape[1]
    size = max(1, n // config.minibatches)
    losses = []
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        for first in range(0, n - size + 1, size):
            loss = _minibatch_loss(task, config, start.flat, batch, perm[first : first + size], start.reference)
            start.terms.apply(optimizer, start.flat, loss.sum(), config.max_grad_norm)
            losses.append(loss.detach())
    return torch.stack(losses).mean(0), len(losses)


def train(config: PPOConfig, task: LocalTask, budget: Budget) -> LocalResult:
    """Train every client of ``task`` from its local parameters until ``budget`` is spent:
    ``local_steps`` per client, or until each client has finished ``local_episodes``."""
    return train_on_policy(
        config, task, budget, lambda start, opt, rollout: improve(task, config, start, opt, rollout, task.gen)
    )
