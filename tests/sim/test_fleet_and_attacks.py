import numpy as np
import pytest

from fedrl.experiment.config import AttackConfig, FleetConfig
from fedrl.sim.attacks import attack, malicious_clients
from fedrl.sim.fleet import make_fleet


def test_durations_combine_compute_speed_and_both_link_directions():
    fleet = make_fleet(
        FleetConfig(step_time_s=0.01, latency_s=0.5, straggler_fraction=0.5, straggler_slowdown=4.0),
        4,
        np.random.default_rng(0),
    )
    durations = fleet.duration(np.arange(4), np.full(4, 100))
    expected = np.where(fleet.straggler, 100 * 0.01 * 4 + 1.0, 100 * 0.01 + 1.0)
    np.testing.assert_allclose(durations, expected)
    assert fleet.straggler.sum() == 2


def test_speed_heterogeneity_spreads_speeds_within_four_times():
    fleet = make_fleet(FleetConfig(speed_heterogeneity=1.0), 500, np.random.default_rng(1))
    assert 0.25 <= fleet.speed.min() < 0.3 and 0.95 < fleet.speed.max() <= 1.0


def test_on_off_pattern_is_periodic_per_client():
    fleet = make_fleet(FleetConfig(availability="onoff", on_rounds=2, off_rounds=1), 6, np.random.default_rng(2))
    clients = np.arange(6)
    up = np.array([fleet.available(clients, r, np.random.default_rng()) for r in range(6)])
    np.testing.assert_array_equal(up[:3], up[3:])  # period 3
    assert (up.sum(axis=0) == 4).all()  # each client up 2 of every 3 rounds


def test_random_dropout_rate():
    fleet = make_fleet(FleetConfig(dropout=0.3), 10, np.random.default_rng(3))
    up = fleet.available(np.arange(10), 1, np.random.default_rng(4))
    many = np.concatenate([fleet.available(np.arange(10), r, np.random.default_rng(r)) for r in range(200)])
    assert up.dtype == bool and abs(1 - many.mean() - 0.3) < 0.03


@pytest.mark.parametrize("kind", ["sign_flip", "scale", "gaussian", "nan", "random_policy"])
def test_attacks_replace_the_honest_delta(kind):
    delta = np.array([1.0, -2.0, 0.5, 0.0], dtype=np.float32)
    target = np.array([9.0, 9.0, 9.0, 9.0], dtype=np.float32)
    out = attack(AttackConfig(fraction=0.2, kind=kind, scale=2.0, sigma=1.0), delta, target, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == delta.shape
    expected = {"sign_flip": -2.0 * delta, "scale": 2.0 * delta, "random_policy": target}
    if kind in expected:
        np.testing.assert_array_equal(out, expected[kind])
    elif kind == "nan":
        assert np.isnan(out).any() and np.isinf(out).any()
    else:
        assert not np.allclose(out, delta)


def test_malicious_clients_are_a_fixed_fraction():
    mask = malicious_clients(AttackConfig(fraction=0.3), 10, np.random.default_rng(0))
    assert mask.sum() == 3
    np.testing.assert_array_equal(mask, malicious_clients(AttackConfig(fraction=0.3), 10, np.random.default_rng(0)))
