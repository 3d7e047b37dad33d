"""Adaptive server optimizers: FedAdagrad, FedAdam and FedYogi.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2. The server treats the
combined client delta ``Delta`` as a negative pseudo-gradient (local minus global points
downhill, so it is added) and takes an adaptive step, coordinate by coordinate:

    m = beta1 m + (1 - beta1) Delta
    v = v + Delta^2                                   (FedAdagrad)
    v = v - (1 - beta2) Delta^2 sign(v - Delta^2)     (FedYogi)
    v = beta2 v + (1 - beta2) Delta^2                 (FedAdam)
    x = x + eta m / (sqrt(v) + tau)

There is no bias correction, as in the paper; ``m`` starts at 0 and ``v`` at ``tau^2``, the
smallest start the paper allows (``v_{-1} >= tau^2``).

Default learning rates: on the first round each coordinate moves by about
``eta (1 - beta1) / sqrt(1 - beta2)`` = ``eta`` for FedAdam and FedYogi and by
``eta (1 - beta1)`` = ``eta / 10`` for FedAdagrad, whatever the scale of the deltas. The
defaults ``eta = 0.01`` (FedAdam, FedYogi) and ``eta = 0.1`` (FedAdagrad) therefore start every
run with the same cautious step of about 0.01 per coordinate, small beside policy weights
initialised at scale 0.1 to 1; ``tau = 1e-3`` keeps coordinates that barely move from taking
full steps. RL deltas are noisy: tune ``server_lr`` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from fedrl.core.robust import StrategyConfigBase, combine
from fedrl.core.update import Update


class _AdaptiveFields(StrategyConfigBase):
    """The fields FedAdagrad, FedAdam and FedYogi share."""

    server_lr: float = Field(
        0.1, gt=0, description="eta, the server learning rate (from a sweep on federated PPO: docs/benchmarks.md)"
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="decay of the first moment m")
    tau: float = Field(1e-3, gt=0, description="adaptivity: added to sqrt(v); v starts at tau^2")


class FedAdagradConfig(_AdaptiveFields):
    """FedAdagrad: the second moment ``v`` sums every squared delta."""

    name: Literal["fedadagrad"] = "fedadagrad"
    server_lr: float = Field(0.3, gt=0, description="eta, the server learning rate (from a sweep: docs/benchmarks.md)")
    tau: float = Field(1e-2, gt=0, description="adaptivity: added to sqrt(v); v starts at tau^2 (from the sweep)")


class FedAdamConfig(_AdaptiveFields):
    """FedAdam: the second moment ``v`` is an exponential average of squared deltas."""

    name: Literal["fedadam"] = "fedadam"
    tau: float = Field(1e-2, gt=0, description="adaptivity: added to sqrt(v); v starts at tau^2 (from the sweep)")
    beta2: float = Field(0.99, ge=0, lt=1, description="decay of the second moment v")


class FedYogiConfig(_AdaptiveFields):
    """FedYogi: ``v`` moves toward the squared delta by an additive, sign-controlled step."""

    name: Literal["fedyogi"] = "fedyogi"
    beta2: float = Field(0.99, ge=0, lt=1, description="rate at which v moves toward Delta^2")


AdaptiveConfig = FedAdagradConfig | FedAdamConfig | FedYogiConfig


@dataclass(frozen=True)
class AdaptiveState:
    """The server's first and second moments ``m`` and ``v``, each ``(d,)`` float32."""

    m: np.ndarray
    v: np.ndarray


def adaptive_init(config: AdaptiveConfig, params: np.ndarray) -> AdaptiveState:
    """``m = 0`` and ``v = tau^2`` in every coordinate."""
    return AdaptiveState(np.zeros_like(params, dtype=np.float32), np.full_like(params, config.tau**2, dtype=np.float32))


def second_moment(config: AdaptiveConfig, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The new ``v`` from the old one and this round's delta, by the config's optimizer."""
    delta2 = delta * delta
    if isinstance(config, FedAdagradConfig):
        return v + delta2
    if isinstance(config, FedYogiConfig):
        return v - (1 - config.beta2) * delta2 * np.sign(v - delta2)
    return config.beta2 * v + (1 - config.beta2) * delta2


def adaptive_step(
    config: AdaptiveConfig, state: AdaptiveState, params: np.ndarray, updates: list[Update]
) -> tuple[np.ndarray, AdaptiveState]:
    """One FedOpt server step on the combined delta of ``updates`` (usable, at least one)."""
    delta = combine(config.robust, updates)
    m = (config.beta1 * state.m + (1 - config.beta1) * delta).astype(np.float32)
    v = second_moment(config, state.v, delta).astype(np.float32)
    step = config.server_lr * m / (np.sqrt(v) + config.tau)
    return (params + step).astype(np.float32), AdaptiveState(m, v)
