"""The loop every on-policy actor-critic learner shares (PPO, A2C).

Collect ``n_steps`` steps of each client's ongoing episodes, improve the policy on them, and
repeat until the budget is spent; the learner supplies only ``improve``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedrl.agents import client
from fedrl.agents.config import ActorCriticBase
from fedrl.agents.local import Budget, LocalResult, LocalTask
from fedrl.agents.optim import Optimizer, make_optimizer
from fedrl.agents.rollout import Rollout, collect

Improve = Callable[[client.Start, Optimizer, Rollout], tuple[torch.Tensor, int]]


def train_on_policy(
    config: ActorCriticBase, task: LocalTask, budget: Budget, improve: Improve, optimizer_kind: str = "adam"
) -> LocalResult:
    """Rollouts of ``config.n_steps`` from the clients' persistent episodes, each followed by
    ``improve(start, optimizer, rollout) -> (loss (C,), optimiser steps)``, until every client
    has spent ``budget``."""
    start = client.begin(config, task)
    optimizer = make_optimizer(start.flat, config.lr, optimizer_kind)
    state = task.env_state
    steps = np.zeros(task.n_clients, dtype=np.int64)
    episodes = np.zeros(task.n_clients, dtype=np.int64)
    losses, opt_steps = [], 0
    while not budget.spent(steps, episodes):
        rollout, state = collect(
            task.net,
            start.flat.detach(),
            task.family,
            task.env_params,
            state,
            config.n_steps,
            config.gamma,
            task.gen,
            task.rng,
            norm=start.norm,
        )
        episodes += rollout.dones.sum(dim=(0, 2)).long().numpy()
        steps += config.n_envs * config.n_steps
        loss, n = improve(start, optimizer, rollout)
        losses.append(loss)
        opt_steps += n
    outcome = client.finish(config, task, start, np.full(task.n_clients, opt_steps))
    return client.result(outcome, state, steps, episodes, torch.stack(losses).mean(0) if losses else None)
