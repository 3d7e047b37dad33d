"""What a local learner is given and what it gives back.

A ``LocalTask`` bundles one client batch's inputs: environments, their state, the global
parameters, the client-side terms of the strategy (FedProx's ``mu``, SCAFFOLD's ``c``), what
each client keeps between rounds (``client_state``) and the random generators. A
``LocalResult`` holds the trained parameters and what the server may learn about the training
(step and episode counts, a loss, SCAFFOLD's control delta) -- never the experience itself --
plus the updated ``client_state``, which stays on the client.

``client_state`` is a ``ClientState`` (``fedrl.agents.memory``): numpy arrays with a leading
client axis ``C`` (numbers only, so that a checkpoint can hold them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from fedrl.agents.memory import ClientState
from fedrl.agents.nets import BatchedNet
from fedrl.core.normstats import NormStats
from fedrl.core.rows import to_arrays
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

    params: np.ndarray  # float32 (C, d): trained on federated coordinates, the global params elsewhere
    env_state: EnvState
    env_steps: np.ndarray  # int64 (C,)
    episodes: np.ndarray  # int64 (C,)
    loss: np.ndarray  # float32 (C,), NaN when no update was made
    client_state: ClientState  # the updated per-client state; stays on the client
    control_delta: np.ndarray | None  # float32 (C, d): SCAFFOLD's c_i+ - c_i; None without control variates
    norm: NormStats | None = None  # (C, ...) the statistics of what each client observed; None without normalisation


@dataclass(frozen=True)
class LocalTask:
    """Inputs of one client batch's local training."""

    net: BatchedNet
    family: EnvFamily
    env_params: np.ndarray  # (C, P)
    env_state: EnvState
    anchor: torch.Tensor  # (d,) the global parameters (federated part of the start; proximal anchor)
    prox_mu: float
    gen: torch.Generator
    rng: np.random.Generator
    client_state: ClientState = field(default_factory=ClientState)  # arrays with leading axis C
    server_control: np.ndarray | None = None  # (d,) SCAFFOLD's c; None unless the strategy uses it
    norm: NormStats | None = None  # the fleet's statistics (unbatched); None unless the learner normalises

    @property
    def n_clients(self) -> int:
        """Number of clients in the batch."""
        return self.env_params.shape[0]


def _check_client_state(client_state: ClientState, n_clients: int) -> None:
    for name, array in to_arrays(client_state).items():
        if not isinstance(array, np.ndarray) or array.ndim == 0 or array.shape[0] != n_clients:
            shape = getattr(array, "shape", type(array).__name__)
            raise ValueError(f"client state {name!r} must be an array with leading axis {n_clients}, got {shape}")


def make_task(
    net: BatchedNet,
    family: EnvFamily,
    env_params: np.ndarray,
    env_state: EnvState,
    start: np.ndarray,
    prox_mu: float,
    rng: np.random.Generator,
    *,
    client_state: ClientState | None = None,
    server_control: np.ndarray | None = None,
    norm: NormStats | None = None,
) -> LocalTask:
    """A task for the clients of ``env_params`` from the global vector ``start`` ``(d,)``; the
    torch generator is seeded from ``rng`` so one numpy seed fixes the whole computation.
    ``client_state`` None or None fields mean clients that have kept nothing yet; ``norm`` is the
    fleet's normalisation statistics."""
    anchor = torch.from_numpy(np.array(start, dtype=np.float32))
    if anchor.shape != (net.spec.dim,):
        raise ValueError(f"global params must have shape ({net.spec.dim},), got {tuple(anchor.shape)}")
    client_state = client_state or ClientState()
    _check_client_state(client_state, env_params.shape[0])
    if server_control is not None:
        server_control = np.asarray(server_control, dtype=np.float32)
        if server_control.shape != (net.spec.dim,):
            raise ValueError(f"server_control must have shape ({net.spec.dim},), got {server_control.shape}")
    gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    return LocalTask(net, family, env_params, env_state, anchor, prox_mu, gen, rng, client_state, server_control, norm)
