"""Server strategies as pure functions with explicit state.

A strategy is ``init(params) -> state`` and ``aggregate(state, params, updates) ->
(params, state)``; nothing is kept on an object. Client-side terms (FedProx's proximal
coefficient) travel with the strategy as plain numbers for the local learner to apply.

- FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017 -- the step-weighted mean of the client deltas.
- FedAvgM: Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated
  Visual Classification", 2019 -- server momentum on the averaged delta, with a server
  learning rate.
- FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 -- FedAvg
  on the server; each client adds ``mu/2 * ||w - w_global||^2`` to its local loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any, Callable, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from fedrl.core.update import Update, stack_deltas, step_weights


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FedAvgConfig(_Frozen):
    """FedAvg: the new global model is the env-step-weighted mean of the client models."""

    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(_Frozen):
    """FedAvgM: server momentum on the averaged delta."""

    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(1.0, gt=0, description="step size applied to the momentum buffer")
    momentum: float = Field(0.9, ge=0, lt=1, description="server momentum coefficient beta")


class FedProxConfig(_Frozen):
    """FedProx: FedAvg on the server plus a proximal term on every client."""

    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(0.01, ge=0, description="proximal coefficient applied by the local learner")


def _strategy_name(value: object) -> str:
    """The ``name`` tag of a strategy config; a config that gives none means FedAvg."""
    return value.get("name", "fedavg") if isinstance(value, dict) else getattr(value, "name", "fedavg")


StrategyConfig = Annotated[
    Union[
        Annotated[FedAvgConfig, Tag("fedavg")],
        Annotated[FedAvgMConfig, Tag("fedavgm")],
        Annotated[FedProxConfig, Tag("fedprox")],
    ],
    Discriminator(_strategy_name),
]


@dataclass(frozen=True)
class NoState:
    """State of a strategy that keeps none (FedAvg, FedProx)."""


@dataclass(frozen=True)
class MomentumState:
    """FedAvgM's server momentum buffer, shape ``(d,)``."""

    velocity: np.ndarray


@dataclass(frozen=True)
class Strategy:
    """A server strategy: two pure functions, the type of its state, and client-side terms."""

    name: str
    init: Callable[[np.ndarray], Any]
    aggregate: Callable[[Any, np.ndarray, list[Update]], tuple[np.ndarray, Any]]
    state_type: type
    prox_mu: float = 0.0


def weighted_mean_delta(updates: list[Update]) -> np.ndarray:
    """Step-weighted mean of the deltas, one matrix-vector product."""
    return (step_weights(updates).astype(np.float32) @ stack_deltas(updates)).astype(np.float32)


def _check(params: np.ndarray, updates: list[Update]) -> None:
    for u in updates:
        if u.delta.shape != params.shape:
            raise ValueError(
                f"update from client {u.client_id} has {u.delta.shape[0]} parameters, "
                f"the global model has {params.shape[0]}"
            )


def fedavg_aggregate(state: NoState, params: np.ndarray, updates: list[Update]) -> tuple[np.ndarray, NoState]:
    """``params + sum_i (n_i / n) delta_i``; no updates leaves ``params`` unchanged."""
    _check(params, updates)
    if not updates:
        return params, state
    return params + weighted_mean_delta(updates), state


def fedavgm_aggregate(config: FedAvgMConfig, state: MomentumState, params: np.ndarray, updates: list[Update]):
    """``v = beta v + mean_delta; params = params + server_lr * v``."""
    _check(params, updates)
    if not updates:
        return params, state
    velocity = (config.momentum * state.velocity + weighted_mean_delta(updates)).astype(np.float32)
    return (params + config.server_lr * velocity).astype(np.float32), MomentumState(velocity)


def make_strategy(config: FedAvgConfig | FedAvgMConfig | FedProxConfig) -> Strategy:
    """The strategy a config names."""
    if isinstance(config, FedAvgMConfig):
        return Strategy(
            name=config.name,
            init=lambda params: MomentumState(np.zeros_like(params, dtype=np.float32)),
            aggregate=lambda s, p, u: fedavgm_aggregate(config, s, p, u),
            state_type=MomentumState,
        )
    mu = config.mu if isinstance(config, FedProxConfig) else 0.0
    return Strategy(config.name, lambda params: NoState(), fedavg_aggregate, NoState, prox_mu=mu)


def state_to_arrays(state: Any) -> dict[str, np.ndarray]:
    """A strategy state's arrays by field name (for checkpoints)."""
    return {f.name: getattr(state, f.name) for f in fields(state)}


def state_from_arrays(strategy: Strategy, arrays: dict[str, np.ndarray]) -> Any:
    """Rebuild a strategy state from ``state_to_arrays`` output."""
    return strategy.state_type(**{f.name: arrays[f.name] for f in fields(strategy.state_type)})
