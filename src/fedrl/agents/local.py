"""What a local learner is given and what it gives back.

A ``LocalTask`` bundles one client batch's inputs: environments, their state, the global
parameters every client starts from, the proximal coefficient and the random generators.
A ``LocalResult`` holds the trained parameters and what the server may learn about the
training (step and episode counts, a loss) -- never the experience itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fedrl.agents.nets import PolicyNet
from fedrl.envs.base import EnvFamily, EnvState


@dataclass(frozen=True)
class Budget:
    """How long a client trains per round: ``steps`` env steps, or until it has finished
    ``episodes`` episodes. Exactly one is set."""

    steps: int | None = None
    episodes: int | None = None

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.episodes is None):
            raise ValueError("set exactly one of local steps and local episodes")

    def spent(self, steps: np.ndarray, episodes: np.ndarray) -> bool:
        """Whether every client of a batch, having taken ``steps`` ``(C,)`` env steps and
        finished ``episodes`` ``(C,)`` episodes, has used its budget up."""
        if self.steps is not None:
            return bool((steps >= self.steps).all())
        return bool((episodes >= self.episodes).all())


class LocalResult(NamedTuple):
    """The outcome of local training for ``C`` clients."""

    params: np.ndarray  # float32 (C, d)
    env_state: EnvState
    env_steps: np.ndarray  # int64 (C,)
    episodes: np.ndarray  # int64 (C,)
    loss: np.ndarray  # float32 (C,), NaN when no update was made


@dataclass(frozen=True)
class LocalTask:
    """Inputs of one client batch's local training."""

    net: PolicyNet
    family: EnvFamily
    env_params: np.ndarray  # (C, P)
    env_state: EnvState
    start: torch.Tensor  # (C, d) parameters every client starts from
    anchor: torch.Tensor  # (d,) the global parameters, for the proximal term
    prox_mu: float
    gen: torch.Generator
    rng: np.random.Generator

    @property
    def n_clients(self) -> int:
        """Number of clients in the batch."""
        return self.env_params.shape[0]

    def result(self, flat: torch.Tensor, state: EnvState, steps: np.ndarray, episodes: np.ndarray, loss) -> LocalResult:
        """Package trained parameters and counts."""
        c = self.n_clients
        return LocalResult(
            params=flat.detach().numpy().astype(np.float32, copy=True),
            env_state=state,
            env_steps=steps.astype(np.int64),
            episodes=episodes.astype(np.int64),
            loss=np.full(c, np.nan, np.float32) if loss is None else loss.numpy().astype(np.float32),
        )


def make_task(
    net: PolicyNet,
    family: EnvFamily,
    env_params: np.ndarray,
    env_state: EnvState,
    start: np.ndarray,
    prox_mu: float,
    rng: np.random.Generator,
) -> LocalTask:
    """A task whose clients all start from the global vector ``start`` ``(d,)``; the torch
    generator is seeded from ``rng`` so one numpy seed fixes the whole computation."""
    anchor = torch.from_numpy(np.asarray(start, dtype=np.float32))
    gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    stacked = anchor.unsqueeze(0).repeat(env_params.shape[0], 1)
    return LocalTask(net, family, env_params, env_state, stacked, anchor, prox_mu, gen, rng)
