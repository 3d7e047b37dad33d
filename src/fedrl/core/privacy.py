"""Client-level differential privacy: Gaussian noise calibrated to a clip norm, and its accountant.

DP-FedAvg (McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018): every client's update is clipped to an L2 norm ``C`` (``clip_to_norm``), so
one client's whole contribution to a round moves the sum of updates by at most ``C``, and
Gaussian noise of standard deviation ``z * C`` hides it (``z`` is the noise multiplier).

- central mode: the server adds ``N(0, (z C)^2 I)`` once, to the sum of the round's updates. The
  clients are sampled independently with probability ``q`` (Poisson sampling), which the
  accountant turns into privacy amplification.
- local mode: each client adds ``N(0, (z C)^2 I)`` to its own clipped update before it leaves,
  so not even the server sees it bare. The server knows who took part, so sampling hides
  nothing from it: each round a client takes part in costs a full Gaussian mechanism
  (``sampling_rate`` is 1), and the run's epsilon is that of the client who took part most.

The accountant: Renyi DP (Mironov, "Renyi Differential Privacy", CSF 2017) of the sampled Gaussian
mechanism (Mironov, Talwar & Zhang, 2019), from Google's dp-accounting library
(``dp_accounting.rdp.RdpAccountant`` with ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``),
converted to ``(epsilon, delta)`` with the bound the library applies (Canonne, Kamath & Steinke,
2020). Why this one: dp-accounting is the maintained source that TF Privacy and Opacus's RDP
accountant descend from, and it needs no torch; RDP composes ``n`` identical rounds by scaling
one curve, so every round's epsilon and the most rounds under a target cost next to nothing; and
it is an upper bound, never an under-report. The library's PLD accountant is tighter -- about
11-15 % lower epsilon at q = 0.1, z = 0.8-1, 50-100 rounds -- but costs 7x as long per
evaluation and grows with the number of compositions; docs/privacy.md compares them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from fedrl.core.frozen import FrozenConfig


class PrivacyConfig(FrozenConfig):
    """Client-level DP: where the noise is added, how much, and the budget a run may spend."""

    mode: Literal["none", "central", "local"] = Field(
        "none", description="none, central (server noises the sum) or local (each client noises its update)"
    )
    noise_multiplier: float | None = Field(
        None, gt=0, description="z: the noise std is z * pipeline.clip_norm; required with a mode"
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta of the (epsilon, delta) guarantee reported")
    target_epsilon: float | None = Field(None, gt=0, description="refuse to start a run whose rounds would spend more")

    @model_validator(mode="after")
    def _noise_iff_mode(self) -> PrivacyConfig:
        """A mode needs a noise multiplier; without a mode, noise and budget would be silently ignored."""
        if self.mode != "none" and self.noise_multiplier is None:
            raise ValueError(f"mode {self.mode!r} needs a noise_multiplier (z > 0)")
        if self.mode == "none" and (self.noise_multiplier is not None or self.target_epsilon is not None):
            raise ValueError("noise_multiplier and target_epsilon are only used with mode central or local")
        return self


def add_gaussian_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``x + N(0, std^2 I)`` as float32."""
    return (x + std * rng.standard_normal(x.shape, dtype=np.float32)).astype(np.float32)


def sampling_rate(config: PrivacyConfig, fraction: float) -> float:
    """The sampling rate the accountant may use: the Poisson rate ``q = fraction`` in central mode;
    1 in local mode, whose adversary (the server) sees which clients took part."""
    return fraction if config.mode == "central" else 1.0


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """Hide dp-accounting's warnings (absl logging) that an RDP order failed to converge: the
    library then drops that order, which can only make the reported epsilon larger."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@lru_cache(maxsize=32)
def _round_rdp(noise_multiplier: float, sampling_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The RDP orders and the RDP of one round of the Poisson-sampled Gaussian mechanism."""
    # imported here: dp-accounting pulls in scipy (about 1 s), which runs without DP need not pay
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    with _quiet_absl():
        accountant = RdpAccountant().compose(event)
    return accountant.orders, accountant.rdp


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The epsilon at ``delta`` of ``rounds`` rounds of the Gaussian mechanism with noise
    multiplier ``z``, each round sampling clients with probability ``q`` (RDP accountant)."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    if rounds == 0:
        return 0.0
    orders, rdp = _round_rdp(float(noise_multiplier), float(sampling_rate))
    with _quiet_absl():
        return float(compute_epsilon(orders, rounds * rdp, delta)[0])


def rounds_within(target_epsilon: float, noise_multiplier: float, sampling_rate: float, delta: float) -> int:
    """The most rounds whose epsilon at ``delta`` stays at or below ``target_epsilon`` (0 if none)."""
    low, high = 0, 1
    while epsilon(noise_multiplier, sampling_rate, high, delta) <= target_epsilon:
        low, high = high, high * 2
    while high - low > 1:  # epsilon(low) <= target < epsilon(high)
        middle = (low + high) // 2
        low, high = (
            (middle, high)
            if epsilon(noise_multiplier, sampling_rate, middle, delta) <= target_epsilon
            else (low, middle)
        )
    return low


def noise_multiplier_for(
    target_epsilon: float, sampling_rate: float, rounds: int, delta: float, rtol: float = 1e-3
) -> float:
    """The smallest noise multiplier (to a relative ``rtol``, rounded up) whose ``rounds`` rounds
    at sampling rate ``q`` spend at most ``target_epsilon`` at ``delta``."""

    def spends(z: float) -> float:
        return epsilon(z, sampling_rate, rounds, delta)

    high = 1.0
    while spends(high) > target_epsilon:
        high *= 2
    low = high / 2 if high > 1 else 0.0
    while high - low > rtol * high:  # spends(high) <= target; low is too little noise (or 0)
        middle = (low + high) / 2
        low, high = (low, middle) if spends(middle) <= target_epsilon else (middle, high)
    return high
