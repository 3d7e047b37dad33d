import numpy as np
import pytest

from fedrl.core.aggregation import (
    all_finite,
    clip_to_norm,
    coordinate_median,
    krum,
    krum_scores,
    multi_krum,
    pairwise_sq_distances,
    screen,
    trimmed_mean,
    weighted_mean,
)
from fedrl.core.update import Update


def _stack(rows):
    return np.asarray(rows, dtype=np.float32)


def _update(cid, delta, control=None):
    control = None if control is None else np.asarray(control, dtype=np.float32)
    return Update(cid, 0, np.asarray(delta, dtype=np.float32), 1, control_delta=control)


def test_weighted_mean_by_hand():
    # Prepare
    stack = _stack([[1, 2], [3, 6]])
    # Execute
    mean = weighted_mean(stack, np.array([1.0, 3.0]))
    # Assert: (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5
    np.testing.assert_allclose(mean, [2.5, 5.0])
    assert mean.dtype == np.float32


def test_weighted_mean_with_zero_weights_is_plain_mean_and_negative_weights_raise():
    stack = _stack([[1, 2], [3, 6]])
    np.testing.assert_allclose(weighted_mean(stack, np.zeros(2)), [2.0, 4.0])
    with pytest.raises(ValueError, match="non-negative"):
        weighted_mean(stack, np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="3 weights for 2 rows"):
        weighted_mean(stack, np.ones(3))


def test_coordinate_median_odd_and_even():
    # Assert: columns sorted (1, 3, 5) and (-2, 4, 10)
    np.testing.assert_allclose(coordinate_median(_stack([[1, 10], [5, -2], [3, 4]])), [3.0, 4.0])
    # even n: sorted (1, 2, 4, 10) -> (2 + 4)/2
    np.testing.assert_allclose(coordinate_median(_stack([[1], [2], [10], [4]])), [3.0])


def test_trimmed_mean_drops_beta_fraction_at_each_end():
    # Prepare: n = 5, beta = 0.2 -> k = 1 dropped at each end of each column
    stack = _stack([[1, -50], [2, 0], [3, 1], [4, 2], [100, 3]])
    # Execute
    trimmed = trimmed_mean(stack, 0.2)
    # Assert: mean(2, 3, 4) = 3 and mean(0, 1, 2) = 1
    np.testing.assert_allclose(trimmed, [3.0, 1.0])
    # beta = 0.1 -> floor(0.5) = 0 dropped: the plain mean, 110/5 = 22 and -44/5
    np.testing.assert_allclose(trimmed_mean(stack, 0.1), [22.0, -8.8], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        trimmed_mean(stack, 0.5)


def test_pairwise_squared_distances():
    d = pairwise_sq_distances(_stack([[0, 0], [3, 4], [0, 1]]))
    np.testing.assert_allclose(d, [[0, 25, 1], [25, 0, 18], [1, 18, 0]])


def test_krum_scores_by_hand():
    # Prepare: points 0, 1, 2, 3, 20 with f = 1 -> each sums its n - f - 2 = 2 nearest
    stack = _stack([[0], [1], [2], [3], [20]])
    # Execute
    scores = krum_scores(stack, 1)
    # Assert: 0 -> 1+4, 1 -> 1+1, 2 -> 1+1, 3 -> 1+4, 20 -> 17^2 + 18^2
    np.testing.assert_allclose(scores, [5, 2, 2, 5, 289 + 324])


def test_krum_picks_the_first_lowest_score():
    stack = _stack([[0], [1], [2], [3], [20]])
    np.testing.assert_allclose(krum(stack, 1), [1.0])


def test_multi_krum_averages_the_m_best():
    stack = _stack([[0], [1], [2], [3], [20]])
    # m = 3: rows 1, 2 and (tie 0/3, first wins) 0 -> mean 1
    np.testing.assert_allclose(multi_krum(stack, 1, m=3), [1.0])
    # default m = n - f = 4: rows 1, 2, 0, 3 -> 1.5
    np.testing.assert_allclose(multi_krum(stack, 1), [1.5])
    # weighted, m = 2: rows 1 and 2 with weights 3 and 1 -> (3*1 + 1*2)/4
    np.testing.assert_allclose(multi_krum(stack, 1, m=2, weights=np.array([9, 3, 1, 9, 9.0])), [1.25])


def test_krum_needs_more_than_2f_plus_2_rows():
    with pytest.raises(ValueError, match=r"more than 2f\+2 = 4 updates, got 4"):
        krum(_stack([[0], [1], [2], [3]]), 1)
    with pytest.raises(ValueError, match="m=6"):
        multi_krum(_stack([[0], [1], [2], [3], [4]]), 1, m=6)


def test_clip_to_norm_scales_long_rows_only():
    # Prepare: norms 5, 0.5 and 0 against a bound of 1
    stack = _stack([[3, 4], [0.3, 0.4], [0, 0]])
    # Execute
    clipped = clip_to_norm(stack, 1.0)
    # Assert
    np.testing.assert_allclose(clipped, [[0.6, 0.8], [0.3, 0.4], [0, 0]], rtol=1e-6)
    assert clipped.dtype == np.float32


def test_robust_rules_resist_three_attackers_out_of_ten():
    # Prepare: 7 honest deltas near +1, 3 attackers sending -10x an honest delta
    rng = np.random.default_rng(0)
    honest = (1.0 + 0.05 * rng.standard_normal((7, 4))).astype(np.float32)
    stack = np.concatenate([honest, -10.0 * honest[:3]])
    # Execute
    mean = weighted_mean(stack, np.ones(10))
    robust = {
        "median": coordinate_median(stack),
        "trimmed_mean": trimmed_mean(stack, 0.3),
        "krum": krum(stack, 3),
        "multikrum": multi_krum(stack, 3),
    }
    # Assert: the mean is dragged to about (7 - 30)/10 = -2.3; the robust rules stay near +1
    assert np.all(mean < -1.5)
    for name, value in robust.items():
        assert np.all(np.abs(value - 1.0) < 0.15), name


def test_screen_rejects_non_finite_and_misshapen_updates_with_reasons():
    # Prepare
    good = _update(0, [1, 2, 3])
    wrong_dtype = _update(5, [1, 2, 3])
    object.__setattr__(wrong_dtype, "delta", np.zeros(3))  # bypass the constructor's own check
    updates = [
        good,
        _update(1, [np.nan, 2, np.nan]),
        _update(2, [1, -np.inf, 3]),
        _update(3, [1, 2]),
        _update(4, [1, 2, 3], control=[0, np.nan, 0]),
        wrong_dtype,
    ]
    # Execute
    screened = screen(updates, 3)
    # Assert: the one good update, marked as screened (a strategy does not read it again)
    (accepted,) = screened.accepted
    assert accepted.client_id == 0 and accepted.delta is good.delta and accepted.screened and not good.screened
    assert [(r.client_id, r.reason) for r in screened.rejected] == [
        (1, "non-finite values in delta (2 NaN, 0 Inf)"),
        (2, "non-finite values in delta (0 NaN, 1 Inf)"),
        (3, "delta has shape (2,), the global model has (3,)"),
        (4, "non-finite values in control_delta (1 NaN, 0 Inf)"),
        (5, "delta is float64, expected float32"),
    ]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 4_097, 99_999])
def test_the_fast_finite_check_finds_a_single_nan_or_inf_anywhere_and_passes_huge_finite_values(bad, where):
    x = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    x[1] = np.finfo(np.float32).max  # finite: its square would overflow, 0 * it does not
    assert all_finite(x)
    x[where] = bad
    assert not all_finite(x)
