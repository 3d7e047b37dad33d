"""Normalisation statistics inside a secure sum: the fleet's statistics without any client's.

Secure aggregation adds vectors of uint32 words mod 2^32 and shows the server only their sum.
Moments do not add (a mean is not a sum), but their sufficient statistics do: the count ``n``, the
sum ``n * mean`` and the sum of squares ``m2 + n * mean^2`` of every statistic. Each of those is
written in fixed point (``SCALE``: 2^-40 resolution, so observations of a thousandth's spread keep
their variance) as a 96-bit two's complement integer, split into ``LIMBS`` words of 16 bits each:
a sum of up to 2^16 clients' words stays below 2^32, so no word wraps, and the limbs put back
together give the sum of the integers mod 2^96, which is their true sum while it stays within
``LIMIT`` (about 3.6e16: a client's sum of squares of a million observations of magnitude 1e5).
From the sums the fleet's moments follow (``from_words``): the statistics of all the clients'
observations pooled, as merging them by counts gives, but for the rounding of the fixed point and
of ``m2 = S2 - n * mean^2``.
"""

from __future__ import annotations

import numpy as np

from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats

SCALE_BITS = 40  # fixed point: values in units of 2^-40
LIMB_BITS, LIMBS = 16, 6  # a 96-bit integer as six 16-bit limbs, each in a uint32 word
BITS = LIMB_BITS * LIMBS
LIMIT = 2.0 ** (BITS - 2 - SCALE_BITS)  # every value (and every sum of them) must stay below this magnitude
MAX_CLIENTS = 2**16  # limbs of at most this many clients sum without wrapping a uint32 word


def word_count(obs_dim: int | None, returns: bool) -> int:
    """The words a client's statistics take: ``1 + 2k`` values per set of ``k`` statistics."""
    values = sum(1 + 2 * k for k in (obs_dim, 1 if returns else None) if k is not None)
    return values * LIMBS


def _sums(m: Moments) -> np.ndarray:
    """``n``, ``n * mean`` and ``m2 + n * mean^2`` of unbatched moments, float64."""
    count = float(m.count)
    return np.concatenate([[count], count * m.mean, m.m2 + count * m.mean**2])


def to_words(norm: NormStats) -> np.ndarray:
    """One client's (unbatched) statistics as uint32 words for the secure sum; ``ValueError`` when a
    value is not finite or too large for the fixed point."""
    values = np.concatenate([_sums(m) for m in (norm.obs, norm.returns) if m is not None])
    if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) >= LIMIT:
        raise ValueError(f"normalisation statistics outside what the secure sum carries (|value| < {LIMIT:.3g})")
    mask = 2**LIMB_BITS - 1
    fixed = [round(v * 2.0**SCALE_BITS) % 2**BITS for v in values.tolist()]  # exact Python integers
    return np.array([(f >> (LIMB_BITS * i)) & mask for f in fixed for i in range(LIMBS)], dtype=np.uint32)


def from_words(words: np.ndarray, obs_dim: int | None, returns: bool) -> NormStats:
    """The pooled statistics that a secure sum of clients' ``to_words`` stands for."""
    if words.shape != (word_count(obs_dim, returns),):
        raise ValueError(f"{words.shape[0]} words of statistics, expected {word_count(obs_dim, returns)}")
    values = []
    for limbs in words.reshape(-1, LIMBS).tolist():
        fixed = sum(limb << (LIMB_BITS * i) for i, limb in enumerate(limbs)) % 2**BITS  # the sum mod 2^96
        signed = fixed - 2**BITS if fixed >= 2 ** (BITS - 1) else fixed
        values.append(signed / 2.0**SCALE_BITS)
    values = np.array(values, dtype=np.float64)
    sets, at = [], 0
    for k in (obs_dim, 1 if returns else None):
        if k is None:
            sets.append(None)
            continue
        count, s1, s2 = values[at], values[at + 1 : at + 1 + k], values[at + 1 + k : at + 1 + 2 * k]
        at += 1 + 2 * k
        mean = s1 / count if count > 0 else np.zeros(k)
        sets.append(Moments(np.array(count), mean, np.maximum(s2 - count * mean**2, 0.0)))
    return NormStats(*sets)
