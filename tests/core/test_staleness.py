import numpy as np
import pytest
from pydantic import ValidationError

from fedrl.core.staleness import StalenessConfig, constant, hinge, polynomial, staleness_weight


def test_constant_ignores_staleness():
    np.testing.assert_array_equal(constant(np.array([0, 3])), [1.0, 1.0])


def test_polynomial_by_hand():
    # (1 + 0)^-0.5, (1 + 3)^-0.5, (1 + 8)^-0.5
    np.testing.assert_allclose(polynomial(np.array([0, 3, 8]), 0.5), [1.0, 0.5, 1 / 3])


def test_hinge_by_hand():
    # b = 2: full weight up to 2, then 1/(0.5 (tau - 2) + 1)
    np.testing.assert_allclose(hinge(np.array([0, 2, 4, 6]), 0.5, 2), [1.0, 1.0, 0.5, 1 / 3])


def test_staleness_weight_follows_config():
    tau = np.array([0, 3])
    assert StalenessConfig() == StalenessConfig(kind="polynomial", a=0.5, b=4)
    np.testing.assert_allclose(staleness_weight(StalenessConfig(), tau), [1.0, 0.5])
    np.testing.assert_allclose(staleness_weight(StalenessConfig(kind="constant"), tau), [1.0, 1.0])
    np.testing.assert_allclose(staleness_weight(StalenessConfig(kind="hinge", a=1, b=1), tau), [1.0, 1 / 3])


def test_negative_staleness_and_unknown_kind_raise():
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        staleness_weight(StalenessConfig(), np.array([-1]))
    with pytest.raises(ValidationError):
        StalenessConfig(kind="exponential")
