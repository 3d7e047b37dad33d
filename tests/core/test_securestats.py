"""Normalisation statistics through a secure sum: the sum of clients' words stands for their pooled
statistics, as merging them by counts gives, within the fixed point's resolution."""

import numpy as np
import pytest

from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats
from fedrl.core.securestats import MAX_CLIENTS, from_words, to_words, word_count


def _stats(rng, n: int, obs_dim: int = 3) -> NormStats:
    obs = rng.normal([100.0, -2.0, 0.01], [30.0, 0.5, 0.002], size=(n, obs_dim))
    returns = rng.normal(-40.0, 12.0, size=(n, 1))
    return NormStats(Moments.of(obs), Moments.of(returns))


def test_a_sum_of_clients_words_is_their_pooled_statistics():
    rng = np.random.default_rng(0)
    clients = [_stats(rng, n) for n in (500, 1, 2048, 77)]

    words = sum(to_words(s).astype(np.uint64) for s in clients).astype(np.uint32)  # what the secure sum adds
    pooled = from_words(words, 3, True)

    merged = clients[0]
    for s in clients[1:]:
        merged = merged.merge(s)
    assert words.shape == (word_count(3, True),) and pooled.obs.count == merged.obs.count == 2626
    for got, want in ((pooled.obs, merged.obs), (pooled.returns, merged.returns)):
        np.testing.assert_allclose(got.mean, want.mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got.var, want.var, rtol=1e-6)


def test_words_wrap_nowhere_for_as_many_clients_as_the_limbs_allow():
    rng = np.random.default_rng(1)
    one = to_words(NormStats(Moments.of(rng.normal(-5.0, 2.0, size=(300, 1))), None))
    assert one.max() < 2**16

    total = (one.astype(np.uint64) * (MAX_CLIENTS - 1)).astype(np.uint32)
    assert np.array_equal(total.astype(np.uint64), one.astype(np.uint64) * (MAX_CLIENTS - 1))
    pooled = from_words(total, 1, False)
    assert pooled.obs.count == 300 * (MAX_CLIENTS - 1)


def test_statistics_the_fixed_point_cannot_carry_are_refused():
    huge = NormStats(Moments(np.array(10.0), np.array([1e16]), np.array([0.0])), None)
    with pytest.raises(ValueError, match="secure sum"):
        to_words(huge)
    with pytest.raises(ValueError, match="expected"):
        from_words(np.zeros(5, dtype=np.uint32), 1, False)


def test_around_the_fleets_mean_a_tiny_spread_far_from_zero_keeps_its_variance():
    # readings about 10,000 that vary by a thousandth: S2 - n mean^2 about zero would cancel to noise
    rng = np.random.default_rng(2)
    clients = [NormStats(Moments.of(rng.normal(1e4, 1e-3, size=(2048, 1))), None) for _ in range(10)]
    center = NormStats(Moments(np.array(5000.0), np.array([1e4 + 0.25]), np.array([1.0])), None)  # last round's

    words = sum(to_words(s, center).astype(np.uint64) for s in clients).astype(np.uint32)
    pooled = from_words(words, 1, False, center)

    merged = clients[0]
    for s in clients[1:]:
        merged = merged.merge(s)
    np.testing.assert_allclose(pooled.obs.var, merged.obs.var, rtol=1e-6)
    np.testing.assert_allclose(pooled.obs.mean, merged.obs.mean, rtol=1e-12)


def test_a_sum_that_wrapped_is_refused_not_read_as_statistics():
    # negative means fill their limbs with 0xffff: past MAX_CLIENTS clients the words wrap
    one = to_words(NormStats(Moments(np.array(10.0), np.array([-1.0]), np.array([5.0])), None))
    wrapped = (one.astype(np.uint64) * (MAX_CLIENTS + 2)).astype(np.uint32)

    with pytest.raises(ValueError, match="wrapped"):
        from_words(wrapped, 1, False)
