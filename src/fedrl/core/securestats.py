"""Normalisation statistics inside a secure sum: the fleet's statistics without any client's.

Secure aggregation adds vectors of uint32 words mod 2^32 and shows the server only their sum.
Moments do not add (a mean is not a sum), but their sufficient statistics do: the count ``n``, and
for every statistic the sum ``n (mean - c)`` and the sum of squares ``m2 + n (mean - c)^2`` of the
observations' distances from a centre ``c`` that every client and the server share (the fleet's
mean as of the round's base version: ``center``), which keeps the sums small and the variance
``S2 - S1^2 / n`` free of the cancellation that a mean far from zero would cause. Each is written in
fixed point (``SCALE_BITS``: 2^-40 resolution) as a 96-bit two's complement integer, split into
``LIMBS`` words of 16 bits each: a sum of up to ``MAX_CLIENTS`` clients' words stays below 2^32, so
no word wraps, and the limbs put back together give the sum of the integers mod 2^96, which is their
true sum while it stays within ``LIMIT`` (about 1.8e16). A sum that did wrap shows as impossible
moments (a count that is not a whole number, a sum of squares below what the sum alone implies),
and ``from_words`` refuses it. From the sums the fleet's moments follow: the statistics of all the
clients' observations pooled, as merging them by counts gives, but for the fixed point's rounding.
"""

from __future__ import annotations

import numpy as np

from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats

SCALE_BITS = 40  # fixed point: values in units of 2^-40
LIMB_BITS, LIMBS = 16, 6  # a 96-bit integer as six 16-bit limbs, each in a uint32 word
BITS = LIMB_BITS * LIMBS
LIMIT = 2.0 ** (BITS - 2 - SCALE_BITS)  # a client's every value must stay below this magnitude
MAX_CLIENTS = 2**16  # limbs of at most this many clients sum without wrapping a uint32 word


def word_count(obs_dim: int | None, returns: bool) -> int:
    """The words a client's statistics take: ``1 + 2k`` values per set of ``k`` statistics."""
    values = sum(1 + 2 * k for k in (obs_dim, 1 if returns else None) if k is not None)
    return values * LIMBS


def _centre(center: NormStats | None, name: str, k: int) -> np.ndarray:
    """The centre of the statistics ``name`` (``obs`` or ``returns``, ``k`` values): ``center``'s means, or zeros."""
    moments = None if center is None else getattr(center, name)
    return np.zeros(k) if moments is None else np.asarray(moments.mean, dtype=np.float64)


def to_words(norm: NormStats, center: NormStats | None = None) -> np.ndarray:
    """One client's (unbatched) statistics as uint32 words for the secure sum, around ``center``'s
    means; ``ValueError`` when a value is not finite or too large for the fixed point."""
    values = []
    for name in ("obs", "returns"):
        m = getattr(norm, name)
        if m is not None:
            count, offset = float(m.count), m.mean - _centre(center, name, m.mean.shape[-1])
            values.append(np.concatenate([[count], count * offset, m.m2 + count * offset**2]))
    values = np.concatenate(values)
    if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) >= LIMIT:
        raise ValueError(f"normalisation statistics outside what the secure sum carries (|value| < {LIMIT:.3g})")
    mask = 2**LIMB_BITS - 1
    fixed = [round(v * 2.0**SCALE_BITS) % 2**BITS for v in values.tolist()]  # exact Python integers
    return np.array([(f >> (LIMB_BITS * i)) & mask for f in fixed for i in range(LIMBS)], dtype=np.uint32)


def from_words(words: np.ndarray, obs_dim: int | None, returns: bool, center: NormStats | None = None) -> NormStats:
    """The pooled statistics that a secure sum of clients' ``to_words`` (around the same
    ``center``) stands for; ``ValueError`` when the sum wrapped (too many clients, or values too
    large): moments no set of observations has."""
    if words.shape != (word_count(obs_dim, returns),):
        raise ValueError(f"{words.shape[0]} words of statistics, expected {word_count(obs_dim, returns)}")
    values = []
    for limbs in words.reshape(-1, LIMBS).tolist():
        fixed = sum(limb << (LIMB_BITS * i) for i, limb in enumerate(limbs)) % 2**BITS  # the sum mod 2^96
        values.append((fixed - 2**BITS if fixed >= 2 ** (BITS - 1) else fixed) / 2.0**SCALE_BITS)
    sets, at = [], 0
    for name, k in (("obs", obs_dim), ("returns", 1 if returns else None)):
        if k is None:
            sets.append(None)
            continue
        count, s1, s2 = values[at], np.array(values[at + 1 : at + 1 + k]), np.array(values[at + 1 + k : at + 1 + 2 * k])
        at += 1 + 2 * k
        _check_sums(count, s1, s2)
        offset = s1 / count if count > 0 else np.zeros(k)
        m2 = np.maximum(s2 - count * offset**2, 0.0)
        sets.append(Moments(np.array(count), _centre(center, name, k) + offset, m2))
    return NormStats(*sets)


def _check_sums(count: float, s1: np.ndarray, s2: np.ndarray) -> None:
    """``ValueError`` for sums no observations have: the sign that a secure sum wrapped."""
    if count < 0 or count != round(count) or (s2 < 0).any() or (count == 0 and (s1.any() or s2.any())):
        raise ValueError(f"the secure sum of statistics wrapped: a count of {count}, sums of squares {s2.min()}")
    if count > 0 and (s2 < s1**2 / count * (1 - 1e-9) - 1e-6).any():  # Cauchy-Schwarz: S2 >= S1^2 / n
        raise ValueError("the secure sum of statistics wrapped: sums of squares below what the sums imply")
