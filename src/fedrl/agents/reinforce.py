"""REINFORCE with a learned baseline (Williams, 1992), for a client batch.

Every iteration each of a client's ``n_envs`` environments plays one whole episode from a
fresh reset; the policy takes one gradient step on the Monte-Carlo returns minus a learned
value baseline, and the baseline one regression step towards the returns. The entropy bonus
and the KL pull toward the global policy (``kl_coef``) are averaged over the same steps.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from fedrl.agents import client, distributions
from fedrl.agents.config import ActorCriticBase
from fedrl.agents.local import Budget, LocalResult, LocalTask
from fedrl.agents.optim import make_optimizer
from fedrl.agents.rollout import collect, first_episode_mask, per_client, returns_to_go
from fedrl.envs.base import reset


class ReinforceConfig(ActorCriticBase):
    """REINFORCE hyper-parameters."""

    name: Literal["reinforce"] = "reinforce"
    norm_adv: bool = Field(True, description="normalise advantages per client")


def _per_client_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over time and envs of ``(T, C, E)`` values, giving ``(C,)``."""
    return (x * mask).sum((0, 2)) / mask.sum((0, 2)).clamp(min=1.0)


def policy_loss(
    task: LocalTask, config: ReinforceConfig, flat: torch.Tensor, rollout, mask, returns, reference: dict | None = None
) -> torch.Tensor:
    """Per-client loss ``(C,)`` over the steps ``mask`` ``(T, C, E)`` keeps: policy gradient on the
    returns minus the value baseline, value regression, entropy bonus and the KL pull."""
    T, C, E = mask.shape
    obs = per_client(rollout.obs)
    heads = task.net.heads(task.net.unpack(flat), obs)

    def back(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(C, T, E).transpose(0, 1)

    actions = per_client(rollout.actions)
    logp = back(distributions.log_prob(heads, actions))
    value = back(heads.value)
    adv = returns - value.detach()
    if config.norm_adv:
        mean = _per_client_mean(adv, mask)[None, :, None]
        std = _per_client_mean((adv - mean).pow(2), mask).sqrt()[None, :, None]
        adv = (adv - mean) / (std + 1e-8)
    ent = distributions.entropy(heads)
    ent = back(ent.expand(C, T * E)) if ent.shape[1] == 1 else back(ent)
    per_step = -logp * adv - config.ent_coef * ent + config.vf_coef * 0.5 * (value - returns).pow(2)
    if config.kl_coef > 0:
        per_step = per_step + config.kl_coef * back(
            client.reference_kl(task.net, reference, heads, obs).expand(C, T * E)
        )
    return _per_client_mean(per_step, mask)


def train(config: ReinforceConfig, task: LocalTask, budget: Budget) -> LocalResult:
    """Train until every client has ``budget.steps`` steps or ``budget.episodes`` episodes."""
    start = client.begin(config, task)
    flat = start.flat
    optimizer = make_optimizer(flat, config.lr)
    steps = np.zeros(task.n_clients, dtype=np.int64)
    episodes = np.zeros(task.n_clients, dtype=np.int64)
    losses = []
    while not budget.spent(steps, episodes):
        state, _ = reset(task.family, task.env_params, config.n_envs, task.rng)
        if start.norm is not None:
            start.norm.restart()
        rollout, _ = collect(
            task.net,
            flat.detach(),
            task.family,
            task.env_params,
            state,
            task.family.time_limit,
            config.gamma,
            task.gen,
            task.rng,
            until_all_done=True,
            norm=start.norm,
        )
        mask = first_episode_mask(rollout.dones)
        returns = returns_to_go(rollout.rewards, rollout.dones, config.gamma)
        loss = policy_loss(task, config, flat, rollout, mask, returns, start.reference)
        start.terms.apply(optimizer, flat, loss.sum(), config.max_grad_norm)
        losses.append(loss.detach())
        steps += mask.sum((0, 2)).long().numpy()
        episodes += config.n_envs
    outcome = client.finish(config, task, start, np.full(task.n_clients, len(losses)))
    return client.result(outcome, task.env_state, steps, episodes, torch.stack(losses).mean(0) if losses else None)
