"""Running means and variances that merge by counts: the statistics behind observation
normalisation and reward scaling.

``Moments`` holds a count, a mean and the sum of squared deviations (``m2``) of everything seen,
with any leading batch axes (one row per client). Two sets merge exactly as if their samples had
been pooled (Chan, Golub and LeVeque, "Updating formulae and a pairwise algorithm for computing
sample variances", 1979), so a server merging its clients' statistics by counts gets the
statistics of all their observations, whatever the order or grouping. float64 throughout: counts
reach millions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Count, mean and ``m2`` of the samples seen; ``count`` has the batch shape ``B``, ``mean``
    and ``m2`` the shape ``B + (k,)`` of ``k`` statistics (observation dimensions, or 1)."""

    count: np.ndarray  # B, float64
    mean: np.ndarray  # B + (k,), float64
    m2: np.ndarray  # B + (k,), float64: the sum of squared deviations from the mean

    @classmethod
    def empty(cls, batch: tuple[int, ...], k: int) -> Moments:
        """No samples yet: count 0, mean 0, and a variance of 1 (see ``var``)."""
        return cls(np.zeros(batch), np.zeros((*batch, k)), np.zeros((*batch, k)))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """The moments of samples ``x`` ``B + (n, k)``, over its second-to-last axis."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=-2)
        return cls(np.full(x.shape[:-2], float(x.shape[-2])), mean, ((x - mean[..., None, :]) ** 2).sum(axis=-2))

    @property
    def var(self) -> np.ndarray:
        """The population variance ``m2 / count``; 1 where nothing has been seen (no rescaling)."""
        count = self.count[..., None]
        return np.where(count > 0, self.m2 / np.maximum(count, 1.0), 1.0)

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of samples pooled (Chan et al.'s pairwise update)."""
        n = self.count + other.count
        weight = np.where(n > 0, other.count / np.maximum(n, 1.0), 0.0)[..., None]
        delta = other.mean - self.mean
        mean = self.mean + delta * weight
        m2 = self.m2 + other.m2 + delta**2 * (self.count[..., None] * weight)
        return Moments(n, mean, m2)

    def total(self) -> Moments:
        """The rows of a batch ``(C,) + ...`` merged into one set, in row order."""
        out = Moments(self.count[0], self.mean[0], self.m2[0])
        for i in range(1, len(self.count)):
            out = out.merge(Moments(self.count[i], self.mean[i], self.m2[i]))
        return out

    @classmethod
    def concat(cls, parts: list[Moments]) -> Moments:
        """Batches of moments ``(C_i,) + ...`` one after another, ``(sum C_i,) + ...``."""
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("count", "mean", "m2")))

    def take(self, rows: np.ndarray) -> Moments:
        """The moments of a batch's ``rows``."""
        return Moments(self.count[rows], self.mean[rows], self.m2[rows])

    @property
    def finite(self) -> np.ndarray:
        """Per row of a batch: whether every value is finite."""
        axes = tuple(range(1, self.mean.ndim))
        return np.isfinite(self.count) & np.isfinite(self.mean).all(axes) & np.isfinite(self.m2).all(axes)

    def broadcast(self, batch: int) -> Moments:
        """``batch`` copies of these (unbatched) moments, one row each."""
        return Moments(
            np.full(batch, self.count, dtype=np.float64),
            np.repeat(self.mean[None], batch, axis=0),
            np.repeat(self.m2[None], batch, axis=0),
        )
