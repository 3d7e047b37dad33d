"""SCAFFOLD: control variates that correct client drift on non-IID clients.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML
2020, Algorithm 1. The server keeps a control variate ``c``, each client ``i`` its own ``c_i``;
a client corrects every local gradient by ``c - c_i``, then sends its model delta ``Delta y_i``
and its control delta ``Delta c_i = c_i+ - c_i``. The server, with ``S`` the clients heard from
and ``N`` the whole fleet:

    x = x + eta_g * mean_{i in S} Delta y_i
    c = c + (|S| / N) * mean_{i in S} Delta c_i        (= c + 1/N sum_{i in S} Delta c_i)

Design. ``N`` is the config field ``n_clients``, with no default: it is a fact about the fleet
that the experiment config knows and must fill in, and ``|S| / N`` is wrong in silence if it is
guessed. ``c`` lives in the strategy state (checkpointed with it) and the engine sends it to the
clients with the global parameters; ``Strategy.uses_control_variates`` tells the engine and the
learner to do so. The client side (``c_i``, the gradient correction) belongs to the learner;
``scaffold_client_control`` is its pure update of ``c_i`` (the paper's option II).

Robust rules: ``mean_{i in S} Delta y_i`` is the strategy's rule (step-weighted for ``mean``,
which is the paper's plain mean when clients take equal steps). Control deltas go through the
same rule, unweighted and unclipped (they are in gradient units, not parameter units), so that
with ``mean`` the update of ``c`` is exactly the paper's. Updates dropped for non-finite values
do not count in ``|S|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from fedrl.core.robust import StrategyConfigBase, combine, reduce_stack
from fedrl.core.update import Update, stack_vectors


class ScaffoldConfig(StrategyConfigBase):
    """SCAFFOLD's server: a global step on the deltas and an update of the control variate ``c``."""

    name: Literal["scaffold"] = "scaffold"
    n_clients: int = Field(gt=0, description="N, the number of clients in the whole fleet (from the experiment config)")
    server_lr: float = Field(1.0, gt=0, description="eta_g, the global step size on the combined delta")


@dataclass(frozen=True)
class ScaffoldState:
    """The server control variate ``c``, ``(d,)`` float32."""

    c: np.ndarray


def scaffold_init(params: np.ndarray) -> ScaffoldState:
    """``c = 0``."""
    return ScaffoldState(np.zeros_like(params, dtype=np.float32))


def _control_stack(config: ScaffoldConfig, updates: list[Update]) -> np.ndarray:
    """The control deltas as an ``(n, d)`` stack; a missing one or too many clients raise."""
    missing = [u.client_id for u in updates if u.control_delta is None]
    if missing:
        raise ValueError(f"scaffold needs a control_delta in every update; clients {missing} sent none")
    if len(updates) > config.n_clients:
        raise ValueError(f"{len(updates)} updates in one round but scaffold n_clients is {config.n_clients}")
    return stack_vectors([u.control_delta for u in updates])


def scaffold_step(
    config: ScaffoldConfig, state: ScaffoldState, params: np.ndarray, updates: list[Update]
) -> tuple[np.ndarray, ScaffoldState]:
    """``x += eta_g * rule(Delta y)``, ``c += |S|/N * rule(Delta c)`` over ``updates`` (usable, at least one)."""
    controls = _control_stack(config, updates)
    new_params = params + config.server_lr * combine(config.robust, updates)
    share = len(updates) / config.n_clients
    c = state.c + share * reduce_stack(config.robust, controls, np.ones(len(updates)))
    return new_params.astype(np.float32), ScaffoldState(c.astype(np.float32))


def scaffold_client_control(
    c_i: np.ndarray, c: np.ndarray, x_global: np.ndarray, y_local: np.ndarray, steps: int, lr: float
) -> tuple[np.ndarray, np.ndarray]:
    """A client's new control variate and the delta it sends (SCAFFOLD option II).

    ``c_i+ = c_i - c + (x - y) / (K lr)`` with ``x`` the global params the client started from,
    ``y`` its params after ``K = steps`` local steps of size ``lr``. Returns ``(c_i+, c_i+ - c_i)``.
    """
    if steps <= 0 or lr <= 0:
        raise ValueError(f"steps and lr must be > 0, got steps={steps}, lr={lr}")
    c_i_new = (c_i - c + (x_global - y_local) / (steps * lr)).astype(np.float32)
    return c_i_new, (c_i_new - c_i).astype(np.float32)
