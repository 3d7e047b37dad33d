"""The statistics behind observation normalisation and reward scaling, as runtimes keep and send them.

``NormStats`` pairs the running moments of observations with those of discounted returns
(``fedrl.core.moments``). The fleet's statistics are one unbatched set; a client batch's
increments, or personal statistics (``learner.normalize.stats: personal``), hold one row per
client. Server, edge agent and simulator merge them by counts, so they are pure arithmetic here
(``fedrl.agents.normalize`` applies them to what a learner observes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrl.core.moments import Moments
from fedrl.core.rows import put_rows, take_rows


@dataclass(frozen=True)
class NormStats:
    """Running statistics of observations ``(k = obs_dim)`` and of discounted returns ``(k = 1)``;
    a field is None when it is not normalised. Unbatched on the server, one row per client in a
    client batch's increments."""

    obs: Moments | None = field(default=None, metadata={"record": Moments})
    returns: Moments | None = field(default=None, metadata={"record": Moments})

    def merge(self, other: NormStats) -> NormStats:
        """Both sets of statistics pooled."""
        pairs = ((self.obs, other.obs), (self.returns, other.returns))
        return NormStats(*(None if a is None else a.merge(b) for a, b in pairs))

    def total(self) -> NormStats:
        """A client batch's rows merged into one, in row order."""
        return NormStats(*(None if m is None else m.total() for m in (self.obs, self.returns)))

    def no_rows(self, batch: int) -> NormStats:
        """``batch`` rows of nothing observed, shaped like these statistics."""
        return NormStats(
            *(None if m is None else Moments.empty((batch,), m.mean.shape[-1]) for m in (self.obs, self.returns))
        )

    def broadcast(self, batch: int) -> NormStats:
        """``batch`` rows of these statistics."""
        return NormStats(*(None if m is None else m.broadcast(batch) for m in (self.obs, self.returns)))

    @classmethod
    def concat(cls, parts: list[NormStats]) -> NormStats:
        """Client batches' rows one after another."""
        first = parts[0]
        return cls(
            None if first.obs is None else Moments.concat([p.obs for p in parts]),
            None if first.returns is None else Moments.concat([p.returns for p in parts]),
        )

    def merge_rows(self, increments: NormStats, keep: np.ndarray) -> NormStats:
        """These (unbatched) statistics with the rows of ``increments`` where ``keep`` ``(C,)`` is
        true merged in, in row order; a row with a non-finite value is left out."""
        rows = np.flatnonzero(keep & increments.finite)
        if not len(rows):
            return self
        return self.merge(take_rows(increments, rows).total())

    @property
    def finite(self) -> np.ndarray:
        """Per row of a client batch: whether every value is finite."""
        return np.logical_and.reduce([m.finite for m in (self.obs, self.returns) if m is not None])

    @property
    def personal(self) -> bool:
        """Whether these are one row of statistics per client (``stats: personal``) rather than the fleet's."""
        return (self.obs or self.returns).count.ndim == 1

    def of_clients(self, ids: np.ndarray) -> NormStats:
        """What the clients ``ids`` normalise with: the fleet's statistics, or their own rows."""
        return take_rows(self, np.asarray(ids)) if self.personal else self

    def rows_of(self, ids: np.ndarray) -> NormStats:
        """One row of statistics for each client of ``ids``: the fleet's repeated, or their own."""
        return take_rows(self, np.asarray(ids)) if self.personal else self.broadcast(len(ids))

    def acting(self, ids: np.ndarray | None = None) -> NormStats:
        """What the clients ``ids`` (all for None) act and are evaluated with: the fleet's statistics,
        or their own, except that a client which has observed nothing yet uses everyone's pooled (its
        own would scale by nothing)."""
        if not self.personal:
            return self
        rows = self if ids is None else take_rows(self, np.asarray(ids))
        empty = np.flatnonzero((rows.obs or rows.returns).count == 0)
        if not len(empty):
            return rows
        return put_rows(rows, empty, self.total().broadcast(len(empty)))

    def pooled(self) -> NormStats:
        """One set of statistics for a client that has none of its own (a held-out client, a saved
        policy): the fleet's, or every client's own pooled by counts."""
        return self.total() if self.personal else self

    def absorbed(self, ids: np.ndarray, increments: NormStats, sent: np.ndarray) -> NormStats:
        """The statistics after the clients ``ids`` observed ``increments`` (one row each, a row with a
        non-finite value left out): merged into the fleet's for the clients whose update was ``sent`` on
        time, or into each client's own, sent or not."""
        if not self.personal:
            return self.merge_rows(increments, sent)
        rows = np.flatnonzero(increments.finite)
        ids = np.asarray(ids)[rows]
        return put_rows(self, ids, take_rows(self, ids).merge(take_rows(increments, rows)))

    @property
    def wire_bytes(self) -> int:
        """What one client's increments take on the wire as float64 values."""
        return 8 * sum(1 + 2 * m.mean.shape[-1] for m in (self.obs, self.returns) if m is not None)

    def problem(self, obs_dim: int | None, returns: bool, max_count: int) -> str | None:
        """Why these (unbatched) statistics, received from a client, cannot be merged into a fleet's
        that normalises observations of ``obs_dim`` values (None: not normalised) and, with
        ``returns``, rewards; None when they can. Each set needs a whole count in ``0..max_count``
        (what the update says it observed), means and sums of squared deviations of the right size
        and within ``LIMIT`` (so no merge and no float32 policy card overflows), and sums of squares
        that are non-negative and 0 for fewer than two samples. What stays is merged by counts, not
        robustly: a client moves the fleet's statistics by its share of the observations."""
        for name, want in (("obs", obs_dim), ("returns", 1 if returns else None)):
            moments = getattr(self, name)
            if (moments is None) != (want is None):
                return f"norm.{name} is {'missing' if moments is None else 'sent'}, but the experiment " + (
                    "normalises it" if moments is None else "does not normalise it"
                )
            if moments is not None:
                problem = _moments_problem(f"norm.{name}", moments, want, max_count)
                if problem is not None:
                    return problem
        return None


LIMIT = 1e15  # the largest mean magnitude and variance a client may report: far beyond any sensor, far below overflow


def _moments_problem(label: str, moments: Moments, size: int, max_count: int) -> str | None:
    """Why one set of a client's moments cannot be merged (see ``NormStats.problem``), or None."""
    if moments.count.shape != () or moments.mean.shape != (size,) or moments.m2.shape != (size,):
        sizes = f"{moments.mean.size} means and {moments.m2.size} sums of squares"
        return f"{label} holds {sizes}; the experiment's have {size}"
    count = float(moments.count)
    if not (0 <= count <= max_count and count == int(count)):
        return f"{label}.count {count:g} is not a whole number in 0..{max_count} (the update's env steps)"
    mean, m2 = moments.mean, moments.m2
    if not (np.isfinite(mean).all() and np.isfinite(m2).all() and (m2 >= 0).all()):
        return f"{label}: means and sums of squared deviations must be finite, the sums >= 0"
    if count <= 1 and (m2 > 0).any():
        return f"{label}: {count:g} sample(s) cannot have squared deviations"
    if count == 0 and (mean != 0).any():
        return f"{label}: no samples cannot have a mean"
    if (np.abs(mean) > LIMIT).any() or (m2 > LIMIT * max(count, 1)).any():
        return f"{label}: means and variances must be within {LIMIT:g}"
    return None
