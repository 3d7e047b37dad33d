"""How long an edge agent waits before calling an unreachable server again.

Exponential backoff with full jitter (Brooker, "Exponential Backoff And Jitter", AWS
Architecture Blog, 2015): the ``n``-th consecutive failure waits a uniform time in
``[0, min(cap, initial * factor**n))``. The exponential ceiling keeps a dead server from being
hammered; the jitter spreads a fleet that lost the server at the same moment, so the devices do
not all knock again at the same moment when it comes back. The count starts from zero after a
call that got an answer.

The generator should be seeded from the operating system's entropy on a device (a seed shared
by a fleet would put every device back in step); tests pass a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BackoffConfig:
    """The waiting times between attempts to reach the server."""

    initial_s: float = 0.5
    """Ceiling of the first wait, in seconds."""
    factor: float = 2.0
    """How much the ceiling grows with each consecutive failure."""
    cap_s: float = 60.0
    """The ceiling never grows past this, however long the server is gone."""

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.cap_s and self.factor >= 1):
            raise ValueError(f"backoff needs 0 < initial_s <= cap_s and factor >= 1, got {self}")

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` consecutive failures (0 = the first)."""
        # Compare exponents, not powers: the power overflows a float after about a thousand failures.
        if failures * np.log(self.factor) >= np.log(self.cap_s / self.initial_s):
            return self.cap_s
        return self.initial_s * self.factor**failures


def backoff_delay(config: BackoffConfig, failures: int, rng: np.random.Generator) -> float:
    """Seconds to wait after ``failures`` consecutive failures: uniform on ``[0, ceiling)``."""
    return float(rng.uniform(0.0, config.ceiling(failures)))
