"""The client half of federation, shared by every learner: which coordinates are federated,
the personal parameters a client keeps, and SCAFFOLD's control variate.

Partial federation. ``federate`` (actor-critic learners) picks the towers that are sent:
``"all"``; ``"actor"`` (each client keeps its own critic); ``"critic"`` (value function
aggregation: the critic is averaged, each client keeps its own actor); ``"none"`` (local training
alone, the baseline: every coordinate is personal). A client acts with the
global parameters on federated coordinates and its personal ones elsewhere (``local_params``);
after training it stores the personal part back in ``ClientState.personal`` ``(C, k)``
(``k`` non-federated coordinates, in flat order) and returns parameters that equal the global
ones off the federated coordinates, so the delta it sends is exactly zero there. A client that
has not trained yet holds NaN there, which means "take the global value": every client's
personal tower then starts from the same initial weights.

SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020). With the server's ``c`` given, every local step adds ``c - c_i`` to each
client's (clipped) gradient; afterwards ``c_i`` becomes ``c_i+`` by option II
(``core.scaffold.scaffold_client_control``, ``K`` = the client's optimiser steps, ``lr`` = the
learner's) and ``c_i+ - c_i`` is sent. ``c_i`` lives in ``ClientState.control`` ``(C, d)``.
With Adam or RMSprop rather than SGD, ``(x - y) / (K lr)`` is a pseudo-gradient, as in every
adaptive-optimiser use of SCAFFOLD. Both terms are zero on non-federated coordinates.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from fedrl.agents import distributions
from fedrl.agents.config import LearnerBase
from fedrl.agents.local import LocalResult, LocalTask
from fedrl.agents.memory import ClientState, DQNMemory
from fedrl.agents.nets import BatchedNet, Heads
from fedrl.agents.normalize import Normalizer, make_normalizer
from fedrl.agents.optim import Optimizer, apply_gradient
from fedrl.core.normstats import NormStats
from fedrl.core.scaffold import scaffold_client_control
from fedrl.envs.base import EnvState


def federated_mask(config: LearnerBase, net: BatchedNet) -> np.ndarray:
    """``(d,)`` bool: the coordinates of the flat vector whose deltas are sent."""
    federate = config.towers
    mask = np.full(net.spec.dim, federate != "none")
    if federate in ("all", "none"):
        return mask
    for name, off, size in zip(net.spec.names, net.spec.offsets, net.spec.sizes):
        mask[off : off + size] = name.startswith(federate + ".")
    return mask


def init_federation_state(
    config: LearnerBase, net: BatchedNet, n_clients: int, uses_control_variates: bool
) -> ClientState:
    """The part of the client state this module keeps: personal params (NaN = not trained
    yet) under partial federation, zero ``c_i`` under SCAFFOLD, zero running returns under reward
    scaling."""
    k = int((~federated_mask(config, net)).sum())
    return ClientState(
        personal=np.full((n_clients, k), np.nan, dtype=np.float32) if k else None,
        control=np.zeros((n_clients, net.spec.dim), dtype=np.float32) if uses_control_variates else None,
        returns=np.zeros((n_clients, config.n_envs)) if config.normalize.reward else None,
    )


def local_params(
    config: LearnerBase, net: BatchedNet, global_params: np.ndarray, client_state: ClientState, n_clients: int
) -> np.ndarray:
    """``(C, d)`` float32: the parameters each client acts with -- ``global_params`` (``(d,)``,
    or ``(C, d)`` such as ``LocalResult.params``) on federated coordinates, the client's
    personal ones elsewhere (the global value where it has none yet)."""
    out = np.array(np.broadcast_to(global_params, (n_clients, net.spec.dim)), dtype=np.float32, order="C")
    personal = client_state.personal
    if personal is not None:
        keep = ~federated_mask(config, net)
        out[:, keep] = np.where(np.isnan(personal), out[:, keep], personal)
    return out


class Terms(NamedTuple):
    """What every optimiser step of a round adds to the clients' gradients."""

    anchor: torch.Tensor  # (d,) the global params: FedProx's anchor
    prox_mu: float | torch.Tensor  # FedProx's mu, or mu on federated coordinates and 0 elsewhere
    correction: torch.Tensor | None  # (C, d) SCAFFOLD's c - c_i; None without control variates

    def apply(
        self,
        optimizer: Optimizer,
        flat: torch.Tensor,
        loss: torch.Tensor,
        max_grad_norm: float,
        active: torch.Tensor | None = None,
    ) -> None:
        """One optimiser step on ``loss``; ``active`` ``(C,)`` bool limits the correction to
        the clients that take this step (the others' loss must not depend on ``flat``)."""
        correction = self.correction
        if correction is not None and active is not None:
            correction = correction * active[:, None]
        apply_gradient(optimizer, flat, loss, self.anchor, self.prox_mu, max_grad_norm, correction)


class Start(NamedTuple):
    """A round's starting point for a client batch."""

    flat: torch.Tensor  # (C, d) leaf that requires grad: the local params, trained in place
    reference: dict[str, torch.Tensor]  # the frozen start params, unpacked: pi_global of the KL term
    terms: Terms
    norm: Normalizer | None  # observation and reward normalisation; None when the learner normalises nothing


def begin(config: LearnerBase, task: LocalTask) -> Start:
    """Local params to train from, the frozen KL reference, the per-step terms and the normaliser."""
    if config.normalize.active and task.norm is None:
        raise ValueError("learner.normalize is on, but the task carries no normalisation statistics")
    mask = federated_mask(config, task.net)
    start = local_params(config, task.net, task.anchor.numpy(), task.client_state, task.n_clients)
    prox_mu: float | torch.Tensor = task.prox_mu
    if task.prox_mu > 0 and not mask.all():
        prox_mu = torch.from_numpy(mask.astype(np.float32)) * task.prox_mu
    correction = None
    if task.server_control is not None:
        c_i = task.client_state.control if task.client_state.control is not None else np.zeros_like(start)
        correction = torch.from_numpy(((task.server_control - c_i) * mask).astype(np.float32))
    flat = torch.from_numpy(start).clone().requires_grad_(True)  # torch's allocator: aligned like every tensor
    reference = task.net.unpack(flat.detach().clone())
    returns = task.client_state.returns
    if returns is None and config.normalize.reward:
        returns = np.zeros((task.n_clients, config.n_envs))
    norm = make_normalizer(config.normalize, task.norm, task.n_clients, returns, config.gamma)
    return Start(flat, reference, Terms(task.anchor, prox_mu, correction), norm)


class Outcome(NamedTuple):
    """What local training leaves: params to send from, new client state, control delta, and the
    statistics of what each client observed."""

    params: np.ndarray  # (C, d) float32, the global params off the federated coordinates
    client_state: ClientState
    control_delta: np.ndarray | None
    norm: NormStats | None = None


def finish(
    config: LearnerBase,
    task: LocalTask,
    start: Start,
    opt_steps: np.ndarray,
    dqn: DQNMemory | None = None,
) -> Outcome:
    """Split the trained ``start.flat`` into the federated params and the personal part, update
    ``c_i`` from ``opt_steps`` ``(C,)`` optimiser steps, keep the learner's own memory ``dqn`` and
    the running returns, and hand over the normaliser's statistics."""
    flat = start.flat
    mask = federated_mask(config, task.net)
    x = task.anchor.numpy()
    y = flat.detach().numpy()
    params = np.where(mask, y, x).astype(np.float32)
    kept = task.client_state
    personal = np.ascontiguousarray(y[:, ~mask], dtype=np.float32) if not mask.all() else kept.personal
    control, control_delta = kept.control, None
    if task.server_control is not None:
        c_i = kept.control if kept.control is not None else np.zeros_like(params)
        control, control_delta = _new_controls(c_i, task.server_control, x, params, opt_steps, config.lr)
    norm = start.norm
    returns = kept.returns if norm is None or norm.returns is None else norm.returns
    state = ClientState(personal, control, dqn if dqn is not None else kept.dqn, returns)
    return Outcome(params, state, control_delta, None if norm is None else norm.seen)


def result(
    outcome: Outcome, env_state: EnvState, steps: np.ndarray, episodes: np.ndarray, loss: torch.Tensor | None
) -> LocalResult:
    """Package a round's outcome and counts; ``loss`` ``(C,)``, None when no step was taken."""
    c = len(steps)
    return LocalResult(
        params=outcome.params,
        env_state=env_state,
        env_steps=np.asarray(steps, dtype=np.int64),
        episodes=np.asarray(episodes, dtype=np.int64),
        loss=np.full(c, np.nan, np.float32) if loss is None else loss.detach().numpy().astype(np.float32),
        client_state=outcome.client_state,
        control_delta=outcome.control_delta,
        norm=outcome.norm,
    )


def _new_controls(c_i, c, x, y, opt_steps: np.ndarray, lr: float) -> tuple[np.ndarray, np.ndarray]:
    """Option II per client, grouped by step count; a client that took no step keeps its ``c_i``."""
    new_c_i = np.array(c_i, dtype=np.float32)
    delta = np.zeros_like(new_c_i)
    for k in np.unique(opt_steps[opt_steps > 0]):
        rows = opt_steps == k
        new_c_i[rows], delta[rows] = scaffold_client_control(c_i[rows], c, x, y[rows], int(k), lr)
    return new_c_i, delta


def reference_kl(net: BatchedNet, reference: dict[str, torch.Tensor], heads: Heads, obs: torch.Tensor) -> torch.Tensor:
    """``KL(pi_local || pi_global)`` ``(C, N)`` at ``obs``, ``pi_global`` the frozen round-start
    policy (the global one whenever the actor is federated; under ``federate="critic"`` the
    client's own round-start actor, a trust region)."""
    with torch.no_grad():
        ref = net.policy(reference, obs)
    return distributions.kl(heads, ref)
