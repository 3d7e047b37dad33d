"""Action distributions over client batches: categorical (discrete) and diagonal Gaussian.

Written out rather than through ``torch.distributions`` so sampling draws from an explicit
``torch.Generator`` (reproducible runs) and nothing is validated on the hot path.
"""

from __future__ import annotations

import math

import torch

from fedrl.agents.nets import Heads

_LOG_2PI = math.log(2 * math.pi)


def sample(heads: Heads, gen: torch.Generator) -> torch.Tensor:
    """Draw one action per row: Gumbel-max over logits, or mean + std * noise."""
    if heads.log_std is None:
        u = torch.rand(heads.actor.shape, generator=gen).clamp_(1e-12, 1.0)
        return torch.argmax(heads.actor - torch.log(-torch.log(u)), dim=-1)
    noise = torch.randn(heads.actor.shape, generator=gen)
    return heads.actor + heads.log_std.exp() * noise


def greedy(heads: Heads) -> torch.Tensor:
    """The most likely action: argmax of logits, or the mean."""
    return heads.actor.argmax(dim=-1) if heads.log_std is None else heads.actor


def log_prob(heads: Heads, action: torch.Tensor) -> torch.Tensor:
    """Log-probability ``(C, N)`` of ``action`` (``(C, N)`` indices or ``(C, N, A)`` reals)."""
    if heads.log_std is None:
        logp = torch.log_softmax(heads.actor, dim=-1)
        return logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    z = (action - heads.actor) * torch.exp(-heads.log_std)
    return (-0.5 * z.pow(2) - heads.log_std - 0.5 * _LOG_2PI).sum(-1)


def entropy(heads: Heads) -> torch.Tensor:
    """Entropy ``(C, N)`` (Gaussian: ``(C, 1)``, it does not depend on the state)."""
    if heads.log_std is None:
        logp = torch.log_softmax(heads.actor, dim=-1)
        return -(logp.exp() * logp).sum(-1)
    return (heads.log_std + 0.5 + 0.5 * _LOG_2PI).sum(-1)


def kl(p: Heads, q: Heads) -> torch.Tensor:
    """``KL(p || q)`` ``(C, N)`` between two policies' distributions at the same observations
    (Gaussian: ``(C, N)`` or ``(C, 1)``, as the means are state-dependent or not)."""
    if p.log_std is None:
        logp, logq = torch.log_softmax(p.actor, dim=-1), torch.log_softmax(q.actor, dim=-1)
        return (logp.exp() * (logp - logq)).sum(-1)
    var_ratio = torch.exp(2 * (p.log_std - q.log_std))
    z = (p.actor - q.actor) * torch.exp(-q.log_std)
    return 0.5 * (var_ratio + z.pow(2) - 1).sum(-1) - (p.log_std - q.log_std).sum(-1)
