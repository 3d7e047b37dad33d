"""A learner of the user's: PPO's machinery (rollouts, GAE, epochs of minibatches, the federated
terms) around the user's own loss.

``learner.name: "module:function"`` names ``loss(out, batch, options) -> (C,)``: ``batch`` is a
``LossBatch`` of one minibatch per client, ``out`` the current policy's ``Outputs`` on its
observations, ``options`` the config's ``learner.options``; the result is one loss per client, each
a mean over that client's samples (a client's gradient must not depend on another's data). Every
federated part still applies: FedProx's proximal term, SCAFFOLD's correction, partial federation,
the KL pull and gradient clipping are fedrl's, around the returned loss. ``experiment.setup``
imports the function and registers it (``register_loss``) before training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from pydantic import Field

from fedrl.agents import client, distributions
from fedrl.agents.config import ActorCriticBase
from fedrl.agents.local import Budget, LocalResult, LocalTask
from fedrl.agents.nets import Heads
from fedrl.agents.onpolicy import train_on_policy
from fedrl.agents.rollout import Rollout, gae
from fedrl.core.errors import UserCodeError
from fedrl.core.robust import CUSTOM_RULE

USER_CODE = f"^{CUSTOM_RULE.pattern}$"


class UserLearnerConfig(ActorCriticBase):
    """An on-policy actor-critic learner whose loss is the user's (see the module docstring)."""

    name: str = Field(pattern=USER_CODE, description="package.module:function, the loss")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the loss as its third argument")
    learner_dir: str | None = Field(
        None, description="where the loss's module is looked up first (default: the config file's folder)"
    )
    n_steps: int = Field(64, ge=1, description="steps per environment per rollout")
    epochs: int = Field(4, ge=1, description="passes over each rollout")
    minibatches: int = Field(4, ge=1, description="minibatches per epoch")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    norm_adv: bool = Field(True, description="normalise advantages per client and minibatch")


class LossBatch(NamedTuple):
    """One minibatch per client, every field ``(C, N, ...)``, as the rollout recorded it."""

    obs: torch.Tensor  # (C, N, obs_dim)
    actions: torch.Tensor  # (C, N) long, or (C, N, A) float
    logp: torch.Tensor  # (C, N): log-probability of the action under the policy that acted
    values: torch.Tensor  # (C, N): the critic's value when it acted
    adv: torch.Tensor  # (C, N): GAE advantages (normalised per client with norm_adv)
    returns: torch.Tensor  # (C, N): value targets, adv + values


class Outputs:
    """The policy being trained, evaluated on the batch's observations."""

    def __init__(self, heads: Heads):
        self.heads = heads

    @property
    def value(self) -> torch.Tensor:
        """The critic's values ``(C, N)``."""
        return self.heads.value

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(C, N)`` of ``actions``."""
        return distributions.log_prob(self.heads, actions)

    def entropy(self) -> torch.Tensor:
        """The policy's entropy at each observation ``(C, N)``."""
        return distributions.entropy(self.heads)


LossFunction = Callable[[Outputs, LossBatch, dict[str, Any]], torch.Tensor]
_losses: dict[str, LossFunction] = {}


def register_loss(name: str, function: LossFunction) -> None:
    """Make ``function`` the loss a learner config names ``name`` ("module:function")."""
    _losses[name] = function


def _loss(name: str) -> LossFunction:
    try:
        return _losses[name]
    except KeyError:
        raise ValueError(f"learner {name} is the user's own and was never registered (register_loss)") from None


def _flatten_time(x: torch.Tensor) -> torch.Tensor:
    """``(T, C, E, ...)`` -> ``(C, T*E, ...)``."""
    x = x.transpose(0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def minibatch_loss(
    task: LocalTask, config: UserLearnerConfig, flat: torch.Tensor, batch: LossBatch, start
) -> torch.Tensor:
    """The user's per-client loss ``(C,)`` on ``batch`` (+ ``kl_coef`` KL to the round-start policy)."""
    heads = task.net.heads(task.net.unpack(flat), batch.obs)
    adv = batch.adv
    if config.norm_adv:
        adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
    loss = _loss(config.name)(Outputs(heads), batch._replace(adv=adv), dict(config.options))
    n_clients = flat.shape[0]
    if not isinstance(loss, torch.Tensor) or loss.shape != (n_clients,):
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise UserCodeError(
            f"learner {config.name} returned {shape}; a loss returns one value per client, ({n_clients},)"
        )
    if config.kl_coef > 0:
        loss = loss + config.kl_coef * client.reference_kl(task.net, start.reference, heads, batch.obs).mean(1)
    return loss


def improve(task: LocalTask, config: UserLearnerConfig, start: client.Start, optimizer, rollout: Rollout):
    """Epochs of minibatch steps on one rollout: mean loss ``(C,)`` and the number of steps."""
    adv, returns = gae(rollout, config.gamma, config.gae_lambda)
    full = LossBatch(
        *(_flatten_time(x) for x in (rollout.obs, rollout.actions, rollout.logp, rollout.values, adv, returns))
    )
    n = full.logp.shape[1]
    size = max(1, n // config.minibatches)
    losses = []
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=task.gen)
        for first in range(0, n - size + 1, size):
            idx = perm[first : first + size]
            loss = minibatch_loss(task, config, start.flat, LossBatch(*(x[:, idx] for x in full)), start)
            start.terms.apply(optimizer, start.flat, loss.sum(), config.max_grad_norm)
            losses.append(loss.detach())
    return torch.stack(losses).mean(0), len(losses)


def train(config: UserLearnerConfig, task: LocalTask, budget: Budget) -> LocalResult:
    """Train every client of ``task`` with the user's loss until ``budget`` is spent."""
    return train_on_policy(config, task, budget, lambda start, opt, rollout: improve(task, config, start, opt, rollout))
