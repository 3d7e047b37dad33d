"""Asynchronous aggregation: FedAsync and FedBuff, with staleness-weighted updates.

- FedAsync: Xie et al., "Asynchronous Federated Optimization", 2019 -- every arriving update is
  applied at once, scaled by ``alpha * s(tau)``.
- FedBuff: Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS
  2022 -- arrivals are buffered and every ``K`` of them make one step
  ``x += eta_g * (1/K) sum_i s(tau_i) Delta_i``.

Versions. Each call to ``aggregate`` makes exactly one new global version: the state holds
``version`` (a 0-d int64 array, so it survives a checkpoint), the number of calls so far, and
an update's staleness is ``tau = version - base_version``. The caller calls ``aggregate`` once
per arrival for FedAsync and once per ``K`` buffered arrivals for FedBuff -- buffering is the
engine's job, and ``Strategy.buffer_size`` (1 or ``K``) tells it when. A call whose updates are
all dropped for non-finite values still makes a new version, equal to the old one, so that the
version is always the number of calls.

Delta form. Xie et al. write FedAsync as model mixing, ``x = (1 - a) x + a x_new`` with
``a = alpha s(tau)`` and ``x_new`` the client's model, trained from the old version
``x_old``. Here the update is applied as ``x = x + a (x_new - x_old) = x + a Delta``: the same
step when ``tau = 0``; otherwise the mixing form also pulls ``x`` back toward ``x_old`` by
``a (x_old - x)``, and this form does not. The delta form is used because the server then needs
no old versions (it is sent a delta, not ``x_new``) and because it is the form FedBuff uses, so
the two differ only in ``alpha`` against ``eta_g / K``.

Robust rules. FedAsync combines nothing, so only ``rule = "mean"`` is accepted there, with
``norm_bound`` to limit what one update can do. FedBuff clips each delta, scales it by
``s(tau_i)``, and reduces the buffer with its rule (step-weighted for ``mean``, which is the
paper's ``1/K`` sum when clients take equal steps and the buffer is full).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from fedrl.core.robust import StrategyConfigBase, clipped_stack, reduce_stack, usable_updates
from fedrl.core.staleness import StalenessConfig, staleness_weight
from fedrl.core.update import Update, step_weights


class FedAsyncConfig(StrategyConfigBase):
    """FedAsync: apply each update as it arrives, scaled by ``alpha * s(staleness)``."""

    asynchronous: ClassVar[bool] = True

    name: Literal["fedasync"] = "fedasync"
    alpha: float = Field(0.6, gt=0, le=1, description="mixing weight of a fresh update (Xie et al.'s alpha)")
    staleness: StalenessConfig = Field(StalenessConfig(), description="s(tau), how staleness scales an update")

    @model_validator(mode="after")
    def _one_update_has_no_rule(self) -> FedAsyncConfig:
        """A rule needs several updates; FedAsync has one at a time."""
        if self.robust.rule != "mean":
            raise ValueError(
                f"fedasync applies one update at a time, so rule {self.robust.rule!r} cannot apply; "
                "use robust.norm_bound"
            )
        return self


class FedBuffConfig(StrategyConfigBase):
    """FedBuff: buffer ``K`` arrivals, then one staleness-weighted step."""

    asynchronous: ClassVar[bool] = True

    name: Literal["fedbuff"] = "fedbuff"
    buffer_size: int = Field(10, ge=1, description="K, the arrivals combined into one new global version")
    server_lr: float = Field(1.0, gt=0, description="eta_g, the step size on the combined buffer")
    staleness: StalenessConfig = Field(StalenessConfig(), description="s(tau), how staleness scales an update")

    @model_validator(mode="after")
    def _buffer_fits_rule(self) -> FedBuffConfig:
        """Krum needs more than 2f+2 updates in a buffer, multi-Krum at least m."""
        if self.robust.rule in ("krum", "multikrum") and self.buffer_size <= 2 * self.robust.byzantine + 2:
            needed = 2 * self.robust.byzantine + 2
            raise ValueError(
                f"rule {self.robust.rule} with byzantine={self.robust.byzantine} needs buffer_size > {needed}"
            )
        if self.robust.multikrum_m is not None and self.robust.multikrum_m > self.buffer_size:
            raise ValueError(f"multikrum_m={self.robust.multikrum_m} exceeds buffer_size={self.buffer_size}")
        return self


@dataclass(frozen=True)
class VersionState:
    """The global version: how many times ``aggregate`` has run, a 0-d int64 array."""

    version: np.ndarray


def version_init(params: np.ndarray) -> VersionState:
    """Version 0, the initial model."""
    return VersionState(np.array(0, dtype=np.int64))


def staleness_of(state: VersionState, updates: list[Update]) -> np.ndarray:
    """``tau_i = version - base_version_i``; an update from a version not yet made raises."""
    tau = np.array([int(state.version) - u.base_version for u in updates], dtype=np.int64)
    for u, t in zip(updates, tau):
        if t < 0:
            raise ValueError(
                f"update from client {u.client_id} is based on version {u.base_version}, "
                f"the server is at version {int(state.version)}"
            )
    return tau


def _next(state: VersionState) -> VersionState:
    return VersionState(np.array(int(state.version) + 1, dtype=np.int64))


def fedasync_aggregate(
    config: FedAsyncConfig, state: VersionState, params: np.ndarray, updates: list[Update]
) -> tuple[np.ndarray, VersionState]:
    """``x += alpha * s(tau) * Delta`` for the one update; always one version later."""
    if len(updates) > 1:
        raise ValueError(f"fedasync applies one update per call (buffer_size 1), got {len(updates)}")
    updates = usable_updates(params, updates)
    if not updates:
        return params, _next(state)
    weight = config.alpha * staleness_weight(config.staleness, staleness_of(state, updates))[0]
    return (params + weight * clipped_stack(config.robust, updates)[0]).astype(np.float32), _next(state)


def fedbuff_aggregate(
    config: FedBuffConfig, state: VersionState, params: np.ndarray, updates: list[Update]
) -> tuple[np.ndarray, VersionState]:
    """``x += eta_g * rule_i(s(tau_i) Delta_i)`` over the buffer; always one version later."""
    updates = usable_updates(params, updates)
    if not updates:
        return params, _next(state)
    weights = staleness_weight(config.staleness, staleness_of(state, updates))
    scaled = clipped_stack(config.robust, updates) * weights[:, None].astype(np.float32)
    delta = reduce_stack(config.robust, scaled, step_weights(updates))
    return (params + config.server_lr * delta).astype(np.float32), _next(state)
