import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from fedrl.core.scaffold import ScaffoldConfig, scaffold_client_control
from fedrl.core.strategies import StrategyConfig, make_strategy
from fedrl.core.update import Update


def _update(cid, delta, control, steps=10):
    f32 = lambda v: None if v is None else np.asarray(v, dtype=np.float32)  # noqa: E731
    return Update(cid, 0, f32(delta), steps, control_delta=f32(control))


def test_scaffold_two_rounds_by_hand():
    # Prepare: N = 4 clients in the fleet, eta_g = 0.5
    strategy = make_strategy(ScaffoldConfig(n_clients=4, server_lr=0.5))
    params = np.array([1.0, 1.0], dtype=np.float32)
    state = strategy.init(params)
    round_1 = [_update(0, [2, 0], [1, -1]), _update(1, [0, 4], [3, 1])]
    # Execute
    params, state = strategy.aggregate(state, params, round_1)
    # Assert: x = [1, 1] + 0.5*[1, 2] = [1.5, 2]; c = 0 + (2/4)*[2, 0] = [1, 0]
    np.testing.assert_allclose(params, [1.5, 2.0])
    np.testing.assert_allclose(state.c, [1.0, 0.0])
    # round 2, one client: x = [1.5, 2] + 0.5*[4, 4] = [3.5, 4]; c = [1, 0] + (1/4)*[-2, 2] = [0.5, 0.5]
    params, state = strategy.aggregate(state, params, [_update(2, [4, 4], [-2, 2])])
    np.testing.assert_allclose(params, [3.5, 4.0])
    np.testing.assert_allclose(state.c, [0.5, 0.5])
    assert state.c.dtype == np.float32


def test_scaffold_tells_the_engine_to_use_control_variates():
    assert make_strategy(ScaffoldConfig(n_clients=3)).uses_control_variates
    assert ScaffoldConfig(n_clients=3).server_lr == 1.0


def test_scaffold_needs_a_control_delta_and_a_fleet_size():
    strategy = make_strategy(ScaffoldConfig(n_clients=1))
    params = np.zeros(2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"clients \[7\] sent none"):
        strategy.aggregate(strategy.init(params), params, [_update(7, [1, 1], None)])
    with pytest.raises(ValueError, match="2 updates in one round but scaffold n_clients is 1"):
        strategy.aggregate(strategy.init(params), params, [_update(0, [1, 1], [0, 0]), _update(1, [1, 1], [0, 0])])
    with pytest.raises(ValidationError, match="n_clients"):
        TypeAdapter(StrategyConfig).validate_python({"name": "scaffold"})


def test_scaffold_client_control_option_two_by_hand():
    # Prepare: K = 4 steps of lr 0.1, so (x - y)/(K lr) = [0.2, -0.4]/0.4 = [0.5, -1]
    c_i, c = np.array([1.0, 0.0], np.float32), np.array([0.5, 0.5], np.float32)
    x, y = np.array([1.0, 2.0], np.float32), np.array([0.8, 2.4], np.float32)
    # Execute
    c_i_new, control_delta = scaffold_client_control(c_i, c, x, y, steps=4, lr=0.1)
    # Assert: c_i+ = [1 - 0.5 + 0.5, 0 - 0.5 - 1] = [1, -1.5]; delta = c_i+ - c_i = [0, -1.5]
    np.testing.assert_allclose(c_i_new, [1.0, -1.5], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(control_delta, [0.0, -1.5], rtol=1e-6, atol=1e-6)
    assert control_delta.dtype == np.float32
    with pytest.raises(ValueError, match="steps and lr must be > 0"):
        scaffold_client_control(c_i, c, x, y, steps=0, lr=0.1)


def test_control_delta_is_validated_like_delta():
    with pytest.raises(ValueError, match="control_delta must be a float32 vector"):
        Update(0, 0, np.zeros(2, np.float32), 1, control_delta=np.zeros(2))
    with pytest.raises(ValueError, match=r"control_delta has shape \(3,\), delta has \(2,\)"):
        Update(0, 0, np.zeros(2, np.float32), 1, control_delta=np.zeros(3, np.float32))
