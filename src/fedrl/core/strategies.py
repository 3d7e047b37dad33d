"""Server strategies as pure functions with explicit state.

A strategy is ``init(params) -> state`` and ``aggregate(state, params, updates) ->
(params, state)``; nothing is kept on an object. Client-side terms (FedProx's proximal
coefficient, SCAFFOLD's control variates) travel with the strategy as plain values for the
local learner to apply.

- FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017 -- the step-weighted mean of the client deltas.
- FedAvgM: Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated
  Visual Classification", 2019 -- server momentum on the averaged delta, with a server
  learning rate.
- FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 -- FedAvg
  on the server; each client adds ``mu/2 * ||w - w_global||^2`` to its local loss.
- FedAdagrad, FedAdam, FedYogi: Reddi et al., ICLR 2021 (``fedrl.core.fedopt``).
- SCAFFOLD: Karimireddy et al., ICML 2020 (``fedrl.core.scaffold``).
- FedAsync, FedBuff: Xie et al. 2019, Nguyen et al., AISTATS 2022 (``fedrl.core.asynchronous``).

Every config shares the robust-aggregation fields of ``BaseStrategyConfig`` (``rule``,
``trim_ratio``, ``byzantine``, ``multikrum_m``, ``norm_bound``; see ``fedrl.core.robust``), and
every ``aggregate`` drops updates with NaN or Inf values before anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial
from typing import Annotated, Any, Callable, Literal, Union

import numpy as np
from pydantic import Discriminator, Field, Tag

from fedrl.core.asynchronous import (
    FedAsyncConfig,
    FedBuffConfig,
    VersionState,
    fedasync_aggregate,
    fedbuff_aggregate,
    version_init,
)
from fedrl.core.fedopt import (
    AdaptiveState,
    FedAdagradConfig,
    FedAdamConfig,
    FedYogiConfig,
    adaptive_aggregate,
    adaptive_init,
)
from fedrl.core.robust import BaseStrategyConfig, combine, usable_updates
from fedrl.core.scaffold import ScaffoldConfig, ScaffoldState, scaffold_aggregate, scaffold_init
from fedrl.core.update import Update


class FedAvgConfig(BaseStrategyConfig):
    """FedAvg: the new global model is the env-step-weighted mean of the client models."""

    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(BaseStrategyConfig):
    """FedAvgM: server momentum on the averaged delta."""

    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(1.0, gt=0, description="step size applied to the momentum buffer")
    momentum: float = Field(0.9, ge=0, lt=1, description="server momentum coefficient beta")


class FedProxConfig(BaseStrategyConfig):
    """FedProx: FedAvg on the server plus a proximal term on every client."""

    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(0.01, ge=0, description="proximal coefficient applied by the local learner")


STRATEGY_CONFIGS: dict[str, type[BaseStrategyConfig]] = {
    "fedavg": FedAvgConfig,
    "fedavgm": FedAvgMConfig,
    "fedprox": FedProxConfig,
    "fedadagrad": FedAdagradConfig,
    "fedadam": FedAdamConfig,
    "fedyogi": FedYogiConfig,
    "scaffold": ScaffoldConfig,
    "fedasync": FedAsyncConfig,
    "fedbuff": FedBuffConfig,
}
"""Every strategy config by its ``name``, the tag of ``StrategyConfig``."""


def _strategy_name(value: object) -> str:
    """The ``name`` tag of a strategy config; a config that gives none means FedAvg."""
    return value.get("name", "fedavg") if isinstance(value, dict) else getattr(value, "name", "fedavg")


StrategyConfig = Annotated[
    Union[
        Annotated[FedAvgConfig, Tag("fedavg")],
        Annotated[FedAvgMConfig, Tag("fedavgm")],
        Annotated[FedProxConfig, Tag("fedprox")],
        Annotated[FedAdagradConfig, Tag("fedadagrad")],
        Annotated[FedAdamConfig, Tag("fedadam")],
        Annotated[FedYogiConfig, Tag("fedyogi")],
        Annotated[ScaffoldConfig, Tag("scaffold")],
        Annotated[FedAsyncConfig, Tag("fedasync")],
        Annotated[FedBuffConfig, Tag("fedbuff")],
    ],
    Discriminator(_strategy_name),
]
"""Any strategy's config, chosen by its ``name`` key (FedAvg when there is none)."""


@dataclass(frozen=True)
class NoState:
    """State of a strategy that keeps none (FedAvg, FedProx)."""


@dataclass(frozen=True)
class MomentumState:
    """FedAvgM's server momentum buffer, shape ``(d,)``."""

    velocity: np.ndarray


@dataclass(frozen=True)
class Strategy:
    """A server strategy: two pure functions, the type of its state, and what the engine must know.

    ``prox_mu``: FedProx's proximal coefficient for the local learner (0 for the others).
    ``uses_control_variates``: SCAFFOLD; the engine sends the state's ``c`` with the global
    params and the learner corrects its gradients and returns a ``control_delta``.
    ``buffer_size``: None for a synchronous strategy (``aggregate`` once per round); for an
    asynchronous one, the number of arrivals that make one call (1 for FedAsync, K for FedBuff).
    """

    name: str
    init: Callable[[np.ndarray], Any]
    aggregate: Callable[[Any, np.ndarray, list[Update]], tuple[np.ndarray, Any]]
    state_type: type
    prox_mu: float = 0.0
    uses_control_variates: bool = False
    buffer_size: int | None = None


def fedavg_aggregate(
    config: BaseStrategyConfig, state: NoState, params: np.ndarray, updates: list[Update]
) -> tuple[np.ndarray, NoState]:
    """``params + rule(delta_i)`` (``sum_i (n_i / n) delta_i`` for the mean); no update keeps ``params``."""
    updates = usable_updates(params, updates)
    if not updates:
        return params, state
    return (params + combine(config, updates)).astype(np.float32), state


def fedavgm_aggregate(
    config: FedAvgMConfig, state: MomentumState, params: np.ndarray, updates: list[Update]
) -> tuple[np.ndarray, MomentumState]:
    """``v = beta v + rule(delta_i); params = params + server_lr * v``."""
    updates = usable_updates(params, updates)
    if not updates:
        return params, state
    velocity = (config.momentum * state.velocity + combine(config, updates)).astype(np.float32)
    return (params + config.server_lr * velocity).astype(np.float32), MomentumState(velocity)


def _no_state(params: np.ndarray) -> NoState:
    """FedAvg's and FedProx's state: nothing."""
    return NoState()


def _zeros_like(params: np.ndarray) -> MomentumState:
    """FedAvgM's initial state: no momentum yet."""
    return MomentumState(np.zeros_like(params, dtype=np.float32))


_AGGREGATES: dict[str, Callable[..., tuple[np.ndarray, Any]]] = {
    "fedavg": fedavg_aggregate,
    "fedavgm": fedavgm_aggregate,
    "fedprox": fedavg_aggregate,
    "fedadagrad": adaptive_aggregate,
    "fedadam": adaptive_aggregate,
    "fedyogi": adaptive_aggregate,
    "scaffold": scaffold_aggregate,
    "fedasync": fedasync_aggregate,
    "fedbuff": fedbuff_aggregate,
}


def make_strategy(config: StrategyConfig) -> Strategy:
    """The strategy a config names."""
    aggregate = partial(_AGGREGATES[config.name], config)
    if isinstance(config, FedAvgMConfig):
        return Strategy(config.name, _zeros_like, aggregate, MomentumState)
    if isinstance(config, (FedAdagradConfig, FedAdamConfig, FedYogiConfig)):
        return Strategy(config.name, partial(adaptive_init, config), aggregate, AdaptiveState)
    if isinstance(config, ScaffoldConfig):
        return Strategy(config.name, scaffold_init, aggregate, ScaffoldState, uses_control_variates=True)
    if isinstance(config, FedAsyncConfig):
        return Strategy(config.name, version_init, aggregate, VersionState, buffer_size=1)
    if isinstance(config, FedBuffConfig):
        return Strategy(config.name, version_init, aggregate, VersionState, buffer_size=config.buffer_size)
    mu = config.mu if isinstance(config, FedProxConfig) else 0.0
    return Strategy(config.name, _no_state, aggregate, NoState, prox_mu=mu)


def state_to_arrays(state: Any) -> dict[str, np.ndarray]:
    """A strategy state's arrays by field name (for checkpoints); scalars are 0-d arrays."""
    return {f.name: getattr(state, f.name) for f in fields(state)}


def state_from_arrays(strategy: Strategy, arrays: dict[str, np.ndarray]) -> Any:
    """Rebuild a strategy state from ``state_to_arrays`` output."""
    return strategy.state_type(**{f.name: np.asarray(arrays[f.name]) for f in fields(strategy.state_type)})
