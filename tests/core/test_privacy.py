import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from pydantic import ValidationError

from fedrl.core.privacy import (
    PrivacyConfig,
    add_gaussian_noise,
    epsilon,
    noise_multiplier_for,
    rounds_within,
    sampling_rate,
)


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a Gaussian mechanism with sensitivity / std = mu (Balle & Wang, ICML
    2018, Theorem 8): delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), by bisection."""

    def phi(x):
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def delta_at(eps):
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    low, high = 0.0, 100.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_at(middle) > delta else (low, middle)
    return high


def test_gaussian_noise_has_the_asked_standard_deviation():
    # Prepare
    x = np.ones(200_000, dtype=np.float32)
    # Execute
    noised = add_gaussian_noise(x, 0.5, np.random.default_rng(0))
    # Assert: the sample std of 200k draws is within 1 % of 0.5
    assert noised.dtype == np.float32
    assert abs((noised - 1).std() - 0.5) < 0.005
    assert abs((noised - 1).mean()) < 0.005


def test_full_participation_lies_between_the_exact_gaussian_and_the_classic_rdp_bound():
    # Prepare: 30 rounds, z = 2, q = 1 compose to one Gaussian mechanism with mu = sqrt(30) / 2
    z, n, delta = 2.0, 30, 1e-5
    exact = _exact_gaussian_epsilon(math.sqrt(n) / z, delta)
    # the classic RDP conversion at its best order: n / (2 z^2) + sqrt(2 n log(1/delta)) / z
    classic = n / (2 * z**2) + math.sqrt(2 * n * math.log(1 / delta)) / z
    # Execute
    eps = epsilon(z, 1.0, n, delta)
    # Assert: by hand, exact 14.83 (dp-accounting's analytic Gaussian agrees) and classic
    # 3.75 + 26.28 / 2 = 16.89; RDP's 15.85 is an upper bound on the truth, tighter than the classic one
    assert round(exact, 2) == 14.83 == round(dp_accounting.get_epsilon_gaussian(z / math.sqrt(n), delta), 2)
    assert round(classic, 2) == 16.89
    assert exact <= eps <= classic and round(eps, 2) == 15.85


def test_epsilon_matches_dp_accountings_own_composition():
    # Prepare: the accountant composing 40 Poisson-sampled rounds itself
    event = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.1))
    expected = RdpAccountant().compose(event, 40).get_epsilon(1e-5)
    # Execute / Assert: our one-round curve scaled by 40 gives the same number
    assert epsilon(1.1, 0.1, 40, 1e-5) == pytest.approx(expected, rel=1e-12)


def test_epsilon_grows_with_rounds_and_sampling_rate():
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert epsilon(1.0, 0.05, 50, 1e-5) < epsilon(1.0, 0.1, 50, 1e-5) < epsilon(1.0, 0.1, 100, 1e-5)


def test_rounds_within_is_the_last_round_under_the_target():
    # Prepare
    z, q, delta = 1.0, 0.1, 1e-5
    # Execute
    n = rounds_within(8.0, z, q, delta)
    # Assert
    assert epsilon(z, q, n, delta) <= 8.0 < epsilon(z, q, n + 1, delta)
    assert rounds_within(0.5, z, q, delta) == 0  # not even one round fits


def test_noise_multiplier_for_a_target_is_just_enough():
    z = noise_multiplier_for(4.0, 1.0, 20, 1e-5)
    assert epsilon(z, 1.0, 20, 1e-5) <= 4.0 < epsilon(z * (1 - 2e-3), 1.0, 20, 1e-5)


def test_local_mode_gets_no_amplification_from_sampling():
    assert sampling_rate(PrivacyConfig(mode="central", noise_multiplier=1.0), 0.1) == 0.1
    assert sampling_rate(PrivacyConfig(mode="local", noise_multiplier=1.0), 0.1) == 1.0


def test_a_mode_needs_noise_and_no_mode_takes_none():
    with pytest.raises(ValidationError, match="needs a noise_multiplier"):
        PrivacyConfig(mode="central")
    with pytest.raises(ValidationError, match="only used with mode"):
        PrivacyConfig(target_epsilon=8.0)
    with pytest.raises(ValidationError, match="greater than 0"):
        PrivacyConfig(mode="local", noise_multiplier=0.0)
