"""Aggregation rules on a stack of client deltas, and the screen that comes before them.

Every rule is a free function of a stack ``(n, d)`` (one row per client) and returns one
vector ``(d,)``. The robust rules bound what a few faulty or malicious clients can do:

- weighted mean: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017 -- not robust: one client can move it anywhere.
- coordinate-wise median and trimmed mean: Yin et al., "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", ICML 2018.
- Krum and multi-Krum: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent", NeurIPS 2017.
- norm bounding (``clip_to_norm``): Sun et al., "Can You Really Backdoor Federated Learning?",
  2019 -- scale every delta down to an L2 norm of at most a bound.

``screen`` runs first: it rejects updates that no rule should ever see (NaN or Inf values, the
wrong length or dtype) and says why, one short sentence per rejected client.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedrl.core.update import Update, as_screened


def weighted_mean(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_i w_i x_i / sum_i w_i``; weights need not sum to 1, and all-zero weights mean equal ones."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (stack.shape[0],):
        raise ValueError(f"{weights.shape[0]} weights for {stack.shape[0]} rows")
    if (weights < 0).any():
        raise ValueError(f"weights must be non-negative, got {weights}")
    total = weights.sum()
    shares = weights / total if total > 0 else np.full(len(weights), 1.0 / len(weights))
    # a float32 product, as FedAvg has always done: a float64 copy of a large stack doubles its memory
    return (shares.astype(np.float32) @ stack).astype(np.float32)


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """The median of each coordinate over the rows (the mean of the two middle values when n is even)."""
    return np.median(stack, axis=0).astype(np.float32)


def trimmed_mean(stack: np.ndarray, beta: float) -> np.ndarray:
    """Per coordinate, drop the ``floor(beta * n)`` largest and smallest values and average the rest."""
    n = stack.shape[0]
    if not 0 <= beta < 0.5:
        raise ValueError(f"trim ratio must be in [0, 0.5), got {beta}")
    k = int(np.floor(beta * n))
    kept = np.sort(stack, axis=0)[k : n - k]
    return kept.mean(axis=0, dtype=np.float64).astype(np.float32)


def pairwise_sq_distances(stack: np.ndarray) -> np.ndarray:
    """``D[i, j] = ||x_i - x_j||^2`` as an ``(n, n)`` float64 array, through the Gram matrix."""
    rows = stack.astype(np.float64)
    gram = rows @ rows.T
    sq = np.diag(gram)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)


def krum_scores(stack: np.ndarray, f: int) -> np.ndarray:
    """Each row's Krum score: the sum of its squared distances to its ``n - f - 2`` nearest other rows.

    Krum's guarantee needs ``n > 2f + 2``; fewer rows raise ``ValueError``.
    """
    n = stack.shape[0]
    if f < 0:
        raise ValueError(f"the number of Byzantine clients f must be >= 0, got {f}")
    if n <= 2 * f + 2:
        raise ValueError(f"Krum with f={f} Byzantine clients needs more than 2f+2 = {2 * f + 2} updates, got {n}")
    distances = pairwise_sq_distances(stack)
    np.fill_diagonal(distances, np.inf)
    nearest = np.sort(distances, axis=1)[:, : n - f - 2]
    return nearest.sum(axis=1)


def krum(stack: np.ndarray, f: int) -> np.ndarray:
    """The row with the lowest Krum score (the first such row on a tie)."""
    return stack[int(np.argmin(krum_scores(stack, f)))].astype(np.float32)


def multi_krum(stack: np.ndarray, f: int, m: int | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """The (weighted) mean of the ``m`` rows with the lowest Krum scores; ``m`` defaults to ``n - f``.

    ``m = 1`` is Krum; ``m = n`` with ``f = 0`` is the plain mean.
    """
    n = stack.shape[0]
    m = n - f if m is None else m
    if not 1 <= m <= n:
        raise ValueError(f"multi-Krum averages m of the n={n} updates, got m={m}")
    best = np.argsort(krum_scores(stack, f), kind="stable")[:m]
    chosen = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    return weighted_mean(stack[best], chosen[best])


def clip_to_norm(stack: np.ndarray, bound: float) -> np.ndarray:
    """Scale each row (the last axis) down to an L2 norm of at most ``bound``; shorter rows are unchanged."""
    if bound <= 0:
        raise ValueError(f"norm bound must be > 0, got {bound}")
    norms = np.linalg.norm(stack.astype(np.float64), axis=-1, keepdims=True)
    scale = np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))
    return (stack * scale).astype(np.float32)


@dataclass(frozen=True)
class Rejection:
    """An update that ``screen`` turned away, and why, in a few words."""

    client_id: int
    reason: str


@dataclass(frozen=True)
class Screened:
    """The updates fit to aggregate, and the rejected ones with their reasons."""

    accepted: list[Update]
    rejected: list[Rejection]


@functools.lru_cache(maxsize=4)
def _zeros(dim: int) -> np.ndarray:
    zeros = np.zeros(dim, dtype=np.float32)
    zeros.flags.writeable = False
    return zeros


def all_finite(value: np.ndarray) -> bool:
    """Whether a float32 vector holds no NaN and no Inf, in one pass at memory speed: ``0 * x`` is NaN
    exactly where ``x`` is NaN or Inf, and the dot product carries a NaN through (``np.isnan`` and
    ``np.isinf`` each make a boolean copy, several times slower on large updates)."""
    with np.errstate(invalid="ignore"):
        return bool(np.isfinite(np.dot(value, _zeros(value.shape[0]))))


def _vector_problem(label: str, value: np.ndarray, dim: int, values: bool) -> str | None:
    """Why ``value`` cannot be aggregated into a ``(dim,)`` float32 model (with ``values``, also
    for a NaN or an Inf), or None if it can."""
    if value.dtype != np.float32:
        return f"{label} is {value.dtype}, expected float32"
    if value.shape != (dim,):
        return f"{label} has shape {value.shape}, the global model has ({dim},)"
    if not values or all_finite(value):
        return None
    nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
    if nan or inf:
        return f"non-finite values in {label} ({nan} NaN, {inf} Inf)"
    return None


def screen(updates: list[Update], dim: int, values: bool = True) -> Screened:
    """Split ``updates`` into those fit to aggregate into a ``(dim,)`` model and those that are not.

    An update is rejected -- never averaged -- when its delta (or its SCAFFOLD control delta)
    is not a float32 vector of length ``dim`` or holds a NaN or an Inf. The accepted ones are
    marked ``screened``, so a strategy does not read their values again; ``values=False`` checks
    dtype and length alone, marking nothing (an update already ``screened`` is not read again).
    """
    accepted, rejected = [], []
    for u in updates:
        check = values and not u.screened
        reason = _vector_problem("delta", u.delta, dim, check)
        if reason is None and u.control_delta is not None:
            reason = _vector_problem("control_delta", u.control_delta, dim, check)
        if reason is None:
            accepted.append(as_screened(u) if check else u)
        else:
            rejected.append(Rejection(u.client_id, reason))
    return Screened(accepted, rejected)
