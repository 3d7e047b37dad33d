"""A policy network of your own for fedrl: ``learner.network: "residual_net:make"``.

fedrl calls ``make(obs_dim, n_out)`` once for the actor (``n_out`` logits, Gaussian means or Q
values) and once for the critic (``n_out = 1``), and federates every parameter of both modules.
This one is a tanh MLP whose hidden layer is layer-normalised, with a residual connection around
the second layer; any ``torch.nn.Module`` that maps ``(N, obs_dim)`` to ``(N, n_out)`` works,
batch normalisation excepted.
"""

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """Input layer with LayerNorm, a residual tanh layer, and an output layer."""

    def __init__(self, obs_dim: int, n_out: int, width: int = 64):
        super().__init__()
        self.inp = nn.Linear(obs_dim, width)
        self.norm = nn.LayerNorm(width)
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, n_out)
        # A small policy head starts near uniform actions, as in fedrl's own MLP.
        nn.init.orthogonal_(self.out.weight, gain=1.0 if n_out == 1 else 0.01)
        nn.init.zeros_(self.out.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.norm(self.inp(obs)))
        x = x + torch.tanh(self.hidden(x))
        return self.out(x)


def make(obs_dim: int, n_out: int) -> nn.Module:
    """One tower of the policy: fedrl calls this for the actor and for the critic."""
    return ResidualMLP(obs_dim, n_out)
