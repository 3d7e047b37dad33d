"""What a client sends after local training, and nothing more.

An update carries the change of the client's parameters relative to the global version it
started from, how many environment steps produced it (the FedAvg weight), a few scalar
metrics, and -- for SCAFFOLD only -- the change of the client's control variate. No
observation, reward or trajectory ever leaves a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np


def _check_vector(client_id: int, label: str, value: np.ndarray) -> None:
    """Raise unless ``value`` is a float32 vector (its values are checked later, by ``screen``)."""
    if value.ndim != 1 or value.dtype != np.float32:
        raise ValueError(
            f"update from client {client_id}: {label} must be a float32 vector, "
            f"got {value.dtype} with shape {value.shape}"
        )


@dataclass(frozen=True)
class UpdateMetrics:
    """What a client reports of its training beside the update: two numbers, never experience."""

    loss: float = float("nan")  # mean training loss; NaN when no optimiser step was taken
    episodes: int = 0  # training episodes the client finished

    def as_mapping(self) -> dict[str, float]:
        """The metrics as the wire's name-to-number map."""
        return {"loss": float(self.loss), "episodes": float(self.episodes)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> UpdateMetrics:
        """The metrics in a wire map (a name it lacks takes its default; others are ignored)."""
        return cls(float(values.get("loss", float("nan"))), int(values.get("episodes", 0)))


@dataclass(frozen=True)
class Update:
    """One client's contribution to a round (or, asynchronously, to one new global version)."""

    client_id: int
    base_version: int  # the global version the client started from (its staleness reference)
    delta: np.ndarray  # float32 (d,): local params minus the global params it started from
    env_steps: int
    metrics: UpdateMetrics = field(default_factory=UpdateMetrics)
    control_delta: np.ndarray | None = None  # float32 (d,): SCAFFOLD's c_i+ - c_i, else None
    clients: int = 1  # clients whose updates it reduces: 1 for a client's own, more for a region's
    # ``screen`` found its values finite, so a strategy does not look again: set by ``as_screened``
    # alone, and reset by ``dataclasses.replace`` (a changed update is judged afresh)
    screened: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_vector(self.client_id, "delta", self.delta)
        if self.control_delta is not None:
            _check_vector(self.client_id, "control_delta", self.control_delta)
            if self.control_delta.shape != self.delta.shape:
                raise ValueError(
                    f"update from client {self.client_id}: control_delta has shape "
                    f"{self.control_delta.shape}, delta has {self.delta.shape}"
                )
        if self.env_steps < 0:
            raise ValueError(f"update from client {self.client_id}: env_steps {self.env_steps} < 0")
        if self.clients < 1:
            raise ValueError(f"update from client {self.client_id}: clients {self.clients} < 1")


def as_screened(update: Update) -> Update:
    """``update`` marked as holding no NaN or Inf (``fedrl.core.aggregation.screen`` found none,
    or a round's candidate showed there was none)."""
    marked = replace(update)
    object.__setattr__(marked, "screened", True)
    return marked


def stack_deltas(updates: list[Update]) -> np.ndarray:
    """The deltas as one ``(n, d)`` float32 array (``stack_vectors``)."""
    return stack_vectors([u.delta for u in updates])


def stack_vectors(vectors: list[np.ndarray]) -> np.ndarray:
    """Equal-length vectors as one ``(n, d)`` array: a view, with nothing copied, when they are
    consecutive rows of one array already (a round read from the server's store), else a stack of
    copies. Read it, never write it; ``ValueError`` for no vectors."""
    if not vectors:
        raise ValueError("no vectors to stack")
    rows = consecutive_rows(vectors)
    return rows if rows is not None else np.stack(vectors)


def consecutive_rows(vectors: list[np.ndarray]) -> np.ndarray | None:
    """``vectors`` as one read-only ``(n, d)`` view when they lie back to back in one buffer, in
    order (rows of one array); None when they do not."""
    first = vectors[0]
    owner, width = first.base, first.nbytes
    if owner is None or not first.flags.c_contiguous:
        return None
    start = _address(first)
    for k, v in enumerate(vectors):
        if v.base is not owner or _address(v) != start + k * width or v.shape != first.shape or v.dtype != first.dtype:
            return None
        if not v.flags.c_contiguous:
            return None
    shape, strides = (len(vectors), first.shape[0]), (width, first.itemsize)
    return np.lib.stride_tricks.as_strided(first, shape, strides, writeable=False)


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def step_weights(updates: list[Update]) -> np.ndarray:
    """FedAvg weights: each update's share of the total env steps (equal shares if all are 0)."""
    steps = np.array([u.env_steps for u in updates], dtype=np.float64)
    total = steps.sum()
    if total == 0:
        return np.full(len(updates), 1.0 / len(updates))
    return steps / total
