"""How much an update counts when it was computed from an old global model.

The staleness ``tau`` of an update is the current global version minus the version the client
started from. A staleness function ``s(tau)`` in ``(0, 1]`` scales the update down; the three
families are those of Xie et al., "Asynchronous Federated Optimization", 2019:

- constant: ``s(tau) = 1``;
- polynomial: ``s(tau) = (1 + tau) ** -a``;
- hinge: ``s(tau) = 1`` if ``tau <= b`` else ``1 / (a (tau - b) + 1)``.

FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS
2022) uses the polynomial one with ``a = 0.5``, ``1 / sqrt(1 + tau)``, the default here.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fedrl.core.frozen import FrozenConfig


class StalenessConfig(FrozenConfig):
    """Which staleness function weights an asynchronous update, and its parameters."""

    kind: Literal["constant", "polynomial", "hinge"] = Field("polynomial", description="the family of s(tau)")
    a: float = Field(0.5, ge=0, description="polynomial: the exponent; hinge: the slope after b")
    b: int = Field(4, ge=0, description="hinge: the staleness up to which updates count fully")


def constant(tau: np.ndarray) -> np.ndarray:
    """``s(tau) = 1``: staleness is ignored."""
    return np.ones(np.shape(tau))


def polynomial(tau: np.ndarray, a: float) -> np.ndarray:
    """``s(tau) = (1 + tau) ** -a``."""
    return (1.0 + np.asarray(tau, dtype=np.float64)) ** -a


def hinge(tau: np.ndarray, a: float, b: int) -> np.ndarray:
    """``s(tau) = 1`` for ``tau <= b``, then ``1 / (a (tau - b) + 1)``."""
    tau = np.asarray(tau, dtype=np.float64)
    return np.where(tau <= b, 1.0, 1.0 / (a * np.maximum(tau - b, 0.0) + 1.0))


def staleness_weight(config: StalenessConfig, tau: np.ndarray) -> np.ndarray:
    """``s(tau)`` for each staleness in ``tau`` (float64, same shape), by ``config.kind``."""
    if np.any(np.asarray(tau) < 0):
        raise ValueError(f"staleness must be >= 0, got {tau}")
    if config.kind == "constant":
        return constant(tau)
    if config.kind == "polynomial":
        return polynomial(tau, config.a)
    return hinge(tau, config.a, config.b)
