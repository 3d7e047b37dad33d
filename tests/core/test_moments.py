"""Running moments merge by counts exactly as if the samples had been pooled."""

import numpy as np

from fedrl.core.moments import Moments


def _pooled(*batches):
    x = np.concatenate(batches)
    return len(x), x.mean(0), x.var(0)


def test_merging_moments_gives_the_moments_of_the_pooled_samples():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(3.0, 2.0, (7, 4)), rng.normal(-1.0, 0.5, (100, 4)), rng.normal(0.0, 9.0, (1, 4))
    merged = Moments.of(a).merge(Moments.of(b)).merge(Moments.of(c))
    n, mean, var = _pooled(a, b, c)
    assert merged.count == n
    np.testing.assert_allclose(merged.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(merged.var, var, rtol=1e-12)


def test_merging_with_nothing_changes_nothing_and_nothing_seen_has_unit_variance():
    x = np.random.default_rng(1).normal(size=(5, 3))
    empty = Moments.empty((), 3)
    np.testing.assert_array_equal(empty.var, np.ones(3))
    for merged in (empty.merge(Moments.of(x)), Moments.of(x).merge(empty)):
        np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(merged.var, x.var(0), rtol=1e-12)


def test_rows_of_a_batch_merge_into_the_statistics_of_all_their_samples():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 10, 2)) * np.array([1.0, 5.0, 0.1])[:, None, None]
    rows = Moments.of(x)  # one row per client
    assert rows.count.tolist() == [10, 10, 10]
    total = rows.total()
    n, mean, var = _pooled(*x)
    assert total.count == n
    np.testing.assert_allclose(total.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(total.var, var, rtol=1e-12)


def test_a_row_with_a_nan_is_flagged_as_not_finite():
    rows = Moments.of(np.random.default_rng(3).normal(size=(3, 4, 2)))
    bad = Moments(rows.count, rows.mean.copy(), rows.m2)
    bad.mean[1, 0] = np.nan
    assert bad.finite.tolist() == [True, False, True]
