"""What a client sends after local training, and nothing more.

An update carries the change of the client's parameters relative to the global version it
started from, how many environment steps produced it (the FedAvg weight), and a few scalar
metrics. No observation, reward or trajectory ever leaves a client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Update:
    """One client's contribution to a round."""

    client_id: int
    base_version: int
    delta: np.ndarray  # float32 (d,): local params minus the global params it started from
    env_steps: int
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.delta.ndim != 1 or self.delta.dtype != np.float32:
            raise ValueError(
                f"update from client {self.client_id}: delta must be a float32 vector, "
                f"got {self.delta.dtype} with shape {self.delta.shape}"
            )
        if self.env_steps < 0:
            raise ValueError(f"update from client {self.client_id}: env_steps {self.env_steps} < 0")


def stack_deltas(updates: list[Update]) -> np.ndarray:
    """The deltas as one ``(n, d)`` float32 array."""
    return np.stack([u.delta for u in updates])


def step_weights(updates: list[Update]) -> np.ndarray:
    """FedAvg weights: each update's share of the total env steps (equal shares if all are 0)."""
    steps = np.array([u.env_steps for u in updates], dtype=np.float64)
    total = steps.sum()
    if total == 0:
        return np.full(len(updates), 1.0 / len(updates))
    return steps / total
