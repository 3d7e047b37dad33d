"""Exponential backoff with full jitter."""

import numpy as np
import pytest

from fedrl.edge.backoff import BackoffConfig, backoff_delay


def test_ceiling_grows_by_the_factor_up_to_the_cap():
    config = BackoffConfig(initial_s=0.5, factor=2.0, cap_s=5.0)
    assert [config.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert config.ceiling(10**6) == 5.0  # a server gone for days: no overflow


def test_delays_are_spread_uniformly_below_the_ceiling():
    config = BackoffConfig(initial_s=1.0, factor=2.0, cap_s=60.0)
    rng = np.random.default_rng(0)
    delays = np.array([backoff_delay(config, 3, rng) for _ in range(4000)])
    assert delays.min() >= 0 and delays.max() < 8.0
    assert abs(delays.mean() - 4.0) < 0.2  # uniform on [0, 8): mean 4
    assert (delays < 4.0).mean() == pytest.approx(0.5, abs=0.03)


def test_the_same_seed_gives_the_same_delays_and_devices_differ():
    config = BackoffConfig()
    same = [[backoff_delay(config, n, np.random.default_rng(7)) for n in range(5)] for _ in range(2)]
    other = [backoff_delay(config, n, np.random.default_rng(8)) for n in range(5)]
    assert same[0] == same[1] != other


@pytest.mark.parametrize("bad", [dict(initial_s=0), dict(initial_s=10, cap_s=1), dict(factor=0.5)])
def test_nonsense_settings_are_refused(bad):
    with pytest.raises(ValueError, match="backoff needs"):
        BackoffConfig(**bad)
