"""Server strategies as pure functions with explicit state, and the one registry of them.

A strategy is ``init(params) -> state`` and ``aggregate(state, params, updates) ->
(params, state)``; nothing is kept on an object. Client-side terms travel as plain values for the
local learner to apply: SCAFFOLD's control variate with the model, and FedProx's proximal
coefficient in the learner's own config (``learner.prox_mu``: FedProx is FedAvg on the server).

- FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017 -- the step-weighted mean of the client deltas.
- FedAvgM: Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated
  Visual Classification", 2019 -- server momentum on the averaged delta, with a server
  learning rate.
- Reptile: Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms", 2018 -- the
  meta-step ``params + eps_t * mean delta`` with the meta step size ``eps_t`` annealed linearly to
  0, each client's local training the inner loop; Jiang et al., "Improving Federated Learning
  Personalization via Model Agnostic Meta Learning", 2019, read FedAvg itself as Reptile (eps 1).
  What it is for: an initialisation that new clients adapt quickly (``eval.adapt_steps``).
- FedAdagrad, FedAdam, FedYogi: Reddi et al., ICLR 2021 (``fedrl.core.fedopt``).
- SCAFFOLD: Karimireddy et al., ICML 2020 (``fedrl.core.scaffold``).
- FedAsync, FedBuff: Xie et al. 2019, Nguyen et al., AISTATS 2022 (``fedrl.core.asynchronous``).

Every config holds a ``robust`` section (``fedrl.core.robust``: a norm bound, then the rule
that reduces the deltas), and every ``aggregate`` drops updates with NaN or Inf values before
anything else. ``STRATEGIES`` maps each ``name`` to its config record and the function that
builds the strategy: adding a strategy is one entry there.

A strategy of the user's (``name: "module:function"``, ``UserStrategyConfig``) is a server
optimiser: the function, called with the config's ``options``, returns an object with
``init(params) -> state`` and ``step(state, params, delta) -> (params, state)``, where ``delta`` is
the robust rule's reduction of the round's deltas (the env-step-weighted mean by default) and the
state a dict of arrays, checkpointed with the model. ``experiment.setup`` imports it; ``user_strategy``
wraps it and refuses what it returns when it does not fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Annotated, Any, Literal, Protocol, Union

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
from fedrl.core.errors import UserCodeError
from fedrl.core.fedopt import (
    AdaptiveState,
    FedAdagradConfig,
    FedAdamConfig,
    FedYogiConfig,
    adaptive_init,
    adaptive_step,
)
from fedrl.core.robust import CUSTOM_RULE, StrategyConfigBase, combine, usable_updates
from fedrl.core.scaffold import ScaffoldConfig, ScaffoldState, scaffold_init, scaffold_step
from fedrl.core.update import Update


class FedAvgConfig(StrategyConfigBase):
    """FedAvg: the new global model is the env-step-weighted mean of the client models."""

    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(StrategyConfigBase):
    """FedAvgM: server momentum on the averaged delta."""

    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(1.0, gt=0, description="step size applied to the momentum buffer")
    momentum: float = Field(0.9, ge=0, lt=1, description="server momentum coefficient beta")


class ReptileConfig(StrategyConfigBase):
    """Reptile's meta-step on the averaged delta, its step size annealed linearly."""

    name: Literal["reptile"] = "reptile"
    meta_lr: float = Field(1.0, gt=0, description="the meta step size eps in round 1")
    anneal_rounds: int | None = Field(
        None,
        ge=1,
        description="eps falls linearly from meta_lr to 0 over this many meta-steps (rounds that made a new model; "
        "Nichol et al. anneal over the whole run: set it to federation.rounds), and stays 0 after; null keeps it "
        "constant",
    )

    def meta_step_size(self, step: int) -> float:
        """``eps`` for the meta-step after ``step`` earlier ones."""
        if self.anneal_rounds is None:
            return self.meta_lr
        return self.meta_lr * max(0.0, 1.0 - step / self.anneal_rounds)


USER_TAG = "module:function"
"""How config errors name the choice of a strategy (or learner) of the user's own."""


class UserStrategyConfig(StrategyConfigBase):
    """A server optimiser of the user's, named ``"module:function"`` (see the module docstring)."""

    name: str = Field(
        pattern=f"^{CUSTOM_RULE.pattern}$", description="package.module:function that makes the optimiser"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of that function")
    strategy_dir: str | None = Field(
        None, description="where its module is looked up first (default: the config file's folder)"
    )


class ServerOptimizer(Protocol):
    """What a user's strategy function returns."""

    def init(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """The state before round 1, from the round-0 parameters ``(d,)``."""

    def step(
        self, state: dict[str, np.ndarray], params: np.ndarray, delta: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The new parameters and state from the round's combined ``delta`` ``(d,)``."""


@dataclass(frozen=True)
class NoState:
    """State of a strategy that keeps none (FedAvg)."""


@dataclass(frozen=True)
class MomentumState:
    """FedAvgM's server momentum buffer, shape ``(d,)``."""

    velocity: np.ndarray


@dataclass(frozen=True)
class Strategy:
    """A server strategy: two pure functions, the type of its state, and what the engine must know.

    ``uses_control_variates``: SCAFFOLD; the engine sends the state's ``c`` with the global
    params and the learner corrects its gradients and returns a ``control_delta``.
    ``buffer_size``: None for a synchronous strategy (``aggregate`` once per round); for an
    asynchronous one, the number of arrivals that make one call (1 for FedAsync, K for FedBuff).
    """

    name: str
    init: Callable[[np.ndarray], Any]
    aggregate: Callable[[Any, np.ndarray, list[Update]], tuple[np.ndarray, Any]]
    state_type: type
    uses_control_variates: bool = False
    buffer_size: int | None = None


def fedavg_step(
    config: FedAvgConfig, state: NoState, params: np.ndarray, updates: list[Update]
) -> tuple[np.ndarray, NoState]:
    """``params + rule(delta_i)`` (``sum_i (n_i / n) delta_i`` for the mean)."""
    return (params + combine(config.robust, updates)).astype(np.float32), state


@dataclass(frozen=True)
class ReptileState:
    """How many meta-steps Reptile has taken (its step size's schedule), a 0-d int64 array."""

    steps: np.ndarray


def reptile_step(
    config: ReptileConfig, state: ReptileState, params: np.ndarray, updates: list[Update]
) -> tuple[np.ndarray, ReptileState]:
    """``params + eps_t * rule(delta_i)``, ``eps_t`` the annealed meta step size."""
    eps = np.float32(config.meta_step_size(int(state.steps)))
    new = (params + eps * combine(config.robust, updates)).astype(np.float32)
    return new, ReptileState(np.asarray(state.steps + 1, dtype=np.int64))


def fedavgm_step(
    config: FedAvgMConfig, state: MomentumState, params: np.ndarray, updates: list[Update]
) -> tuple[np.ndarray, MomentumState]:
    """``v = beta v + rule(delta_i); params = params + server_lr * v``."""
    velocity = (config.momentum * state.velocity + combine(config.robust, updates)).astype(np.float32)
    return (params + config.server_lr * velocity).astype(np.float32), MomentumState(velocity)


def _no_state(params: np.ndarray) -> NoState:
    """FedAvg's state: nothing."""
    return NoState()


def _zeros_like(params: np.ndarray) -> MomentumState:
    """FedAvgM's initial state: no momentum yet."""
    return MomentumState(np.zeros_like(params, dtype=np.float32))


def synchronous_aggregate(step: Callable, config: Any, state: Any, params: np.ndarray, updates: list[Update]) -> tuple:
    """A synchronous strategy's ``aggregate``: its ``step`` on the usable updates (NaN and Inf
    dropped, a wrong length refused); a round with none leaves ``params`` and ``state`` as they are."""
    usable = usable_updates(params, updates)
    return step(config, state, params, usable) if usable else (params, state)


def _fedavg(config: FedAvgConfig) -> Strategy:
    return Strategy(config.name, _no_state, partial(synchronous_aggregate, fedavg_step, config), NoState)


def _fedavgm(config: FedAvgMConfig) -> Strategy:
    return Strategy(config.name, _zeros_like, partial(synchronous_aggregate, fedavgm_step, config), MomentumState)


def _no_steps(params: np.ndarray) -> ReptileState:
    """Reptile's initial state: no meta-step taken."""
    return ReptileState(np.asarray(0, dtype=np.int64))


def _reptile(config: ReptileConfig) -> Strategy:
    return Strategy(config.name, _no_steps, partial(synchronous_aggregate, reptile_step, config), ReptileState)


def _adaptive(config: FedAdagradConfig | FedAdamConfig | FedYogiConfig) -> Strategy:
    aggregate = partial(synchronous_aggregate, adaptive_step, config)
    return Strategy(config.name, partial(adaptive_init, config), aggregate, AdaptiveState)


def _scaffold(config: ScaffoldConfig) -> Strategy:
    aggregate = partial(synchronous_aggregate, scaffold_step, config)
    return Strategy(config.name, scaffold_init, aggregate, ScaffoldState, uses_control_variates=True)


def _fedasync(config: FedAsyncConfig) -> Strategy:
    return Strategy(config.name, version_init, partial(fedasync_aggregate, config), VersionState, buffer_size=1)


def _fedbuff(config: FedBuffConfig) -> Strategy:
    aggregate = partial(fedbuff_aggregate, config)
    return Strategy(config.name, version_init, aggregate, VersionState, buffer_size=config.buffer_size)


def user_strategy(config: UserStrategyConfig, optimizer: ServerOptimizer) -> Strategy:
    """The synchronous strategy that runs the user's ``optimizer`` on the robust rule's delta."""
    name = config.name

    def init(params: np.ndarray) -> dict[str, np.ndarray]:
        return _checked_state(name, "init", optimizer.init(np.array(params, dtype=np.float32)))

    def step(config: UserStrategyConfig, state: dict, params: np.ndarray, updates: list[Update]) -> tuple:
        delta = combine(config.robust, updates)
        mine = {key: np.array(value, copy=True) for key, value in state.items()}  # the kept state stays as it is
        new, state = optimizer.step(mine, np.array(params, dtype=np.float32), delta)
        new = np.asarray(new, dtype=np.float32)
        if new.shape != params.shape or not np.isfinite(new).all():
            raise UserCodeError(
                f"strategy {name} returned parameters of shape {new.shape} (finite: {bool(np.isfinite(new).all())}); "
                f"step must return {params.size} finite numbers and its state"
            )
        return new, _checked_state(name, "step", state)

    return Strategy(name, init, partial(synchronous_aggregate, step, config), dict)


def _checked_state(name: str, method: str, state: Any) -> dict[str, np.ndarray]:
    """A user's strategy state as a dict of arrays, or ``UserCodeError`` naming what it returned."""
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise UserCodeError(f"strategy {name}: {method} must return its state as a dict of arrays by name")
    arrays = {}
    for key, value in state.items():
        try:
            arrays[key] = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise UserCodeError(
                f"strategy {name}: {method} returned state {key!r} that is not an array ({exc})"
            ) from None
        if arrays[key].dtype.kind not in "biuf":
            raise UserCodeError(
                f"strategy {name}: {method} returned state {key!r} of dtype {arrays[key].dtype}; a state holds numbers"
            )
    return arrays


@dataclass(frozen=True)
class StrategyKind:
    """One registered strategy: its config record (whose ``name`` default is its key) and the
    function that builds the strategy from a config."""

    config: type[StrategyConfigBase]
    build: Callable[[Any], Strategy]


STRATEGIES: dict[str, StrategyKind] = {
    "fedavg": StrategyKind(FedAvgConfig, _fedavg),
    "fedavgm": StrategyKind(FedAvgMConfig, _fedavgm),
    "fedadagrad": StrategyKind(FedAdagradConfig, _adaptive),
    "fedadam": StrategyKind(FedAdamConfig, _adaptive),
    "fedyogi": StrategyKind(FedYogiConfig, _adaptive),
    "scaffold": StrategyKind(ScaffoldConfig, _scaffold),
    "fedasync": StrategyKind(FedAsyncConfig, _fedasync),
    "fedbuff": StrategyKind(FedBuffConfig, _fedbuff),
    "reptile": StrategyKind(ReptileConfig, _reptile),
}
"""Every strategy by its config's ``name``; the first is the default."""

STRATEGY_CONFIGS: dict[str, type[StrategyConfigBase]] = {name: kind.config for name, kind in STRATEGIES.items()}


def _strategy_name(value: object) -> str:
    """The ``name`` tag of a strategy config; a config that gives none means FedAvg."""
    name = value.get("name", "fedavg") if isinstance(value, dict) else getattr(value, "name", "fedavg")
    return USER_TAG if isinstance(name, str) and CUSTOM_RULE.fullmatch(name) else name


StrategyConfig = Annotated[
    Union[
        (
            *(Annotated[kind.config, Tag(name)] for name, kind in STRATEGIES.items()),
            Annotated[UserStrategyConfig, Tag(USER_TAG)],
        )
    ],
    Discriminator(_strategy_name),
]
"""Any strategy's config, chosen by its ``name`` key (FedAvg when there is none; a user's own
when it reads ``module:function``)."""


def make_strategy(config: StrategyConfigBase, optimizer: ServerOptimizer | None = None) -> Strategy:
    """The strategy a config names (a user's needs its ``optimizer``, imported and made by the caller)."""
    if isinstance(config, UserStrategyConfig):
        if optimizer is None:
            raise ValueError(f"strategy {config.name} is the user's own: make_strategy needs its optimizer")
        return user_strategy(config, optimizer)
    return STRATEGIES[config.name].build(config)


def state_to_arrays(state: Any) -> dict[str, np.ndarray]:
    """A strategy state's arrays by field name (for checkpoints; a user's state is its own dict);
    scalars are 0-d arrays."""
    if isinstance(state, dict):
        return dict(state)
    return {f.name: getattr(state, f.name) for f in fields(state)}


def state_from_arrays(strategy: Strategy, arrays: dict[str, np.ndarray]) -> Any:
    """Rebuild a strategy state from ``state_to_arrays`` output."""
    if strategy.state_type is dict:
        return {key: np.asarray(value) for key, value in arrays.items()}
    return strategy.state_type(**{f.name: np.asarray(arrays[f.name]) for f in fields(strategy.state_type)})
