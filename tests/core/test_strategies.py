import numpy as np
import pytest

from fedrl.core.strategies import (
    FedAvgConfig,
    FedAvgMConfig,
    FedProxConfig,
    make_strategy,
    state_from_arrays,
    state_to_arrays,
)
from fedrl.core.update import Update


def _update(cid, delta, steps):
    return Update(client_id=cid, base_version=0, delta=np.asarray(delta, dtype=np.float32), env_steps=steps)


def test_fedavg_weights_by_env_steps():
    # Prepare: two clients, the second saw three times as many steps
    strategy = make_strategy(FedAvgConfig())
    params = np.array([1.0, 1.0], dtype=np.float32)
    updates = [_update(0, [4.0, 0.0], 100), _update(1, [0.0, 8.0], 300)]
    # Execute
    new, _ = strategy.aggregate(strategy.init(params), params, updates)
    # Assert: 1 + 0.25*4 = 2, 1 + 0.75*8 = 7
    np.testing.assert_allclose(new, [2.0, 7.0])
    assert new.dtype == np.float32


def test_fedavg_without_updates_keeps_params():
    strategy = make_strategy(FedAvgConfig())
    params = np.array([3.0], dtype=np.float32)
    new, _ = strategy.aggregate(strategy.init(params), params, [])
    np.testing.assert_array_equal(new, params)


def test_fedavgm_momentum_by_hand():
    strategy = make_strategy(FedAvgMConfig(server_lr=0.5, momentum=0.9))
    params = np.zeros(1, dtype=np.float32)
    state = strategy.init(params)
    # round 1: mean delta 2 -> v = 2, params = 0 + 0.5*2 = 1
    params, state = strategy.aggregate(state, params, [_update(0, [2.0], 1)])
    np.testing.assert_allclose(params, [1.0])
    # round 2: mean delta 1 -> v = 0.9*2 + 1 = 2.8, params = 1 + 1.4 = 2.4
    params, state = strategy.aggregate(state, params, [_update(0, [1.0], 5)])
    np.testing.assert_allclose(state.velocity, [2.8], rtol=1e-6)
    np.testing.assert_allclose(params, [2.4], rtol=1e-6)


def test_fedavgm_with_zero_momentum_and_unit_lr_is_fedavg():
    params = np.array([0.5, -0.5], dtype=np.float32)
    updates = [_update(0, [1.0, 2.0], 10), _update(1, [3.0, -2.0], 30)]
    avg = make_strategy(FedAvgConfig())
    avgm = make_strategy(FedAvgMConfig(server_lr=1.0, momentum=0.0))
    a, _ = avg.aggregate(avg.init(params), params, updates)
    b, _ = avgm.aggregate(avgm.init(params), params, updates)
    np.testing.assert_allclose(a, b)


def test_fedprox_aggregates_like_fedavg_and_carries_mu():
    prox = make_strategy(FedProxConfig(mu=0.1))
    params = np.zeros(1, dtype=np.float32)
    new, _ = prox.aggregate(prox.init(params), params, [_update(0, [1.0], 1), _update(1, [3.0], 1)])
    np.testing.assert_allclose(new, [2.0])
    assert prox.prox_mu == 0.1
    assert make_strategy(FedAvgConfig()).prox_mu == 0.0


def test_update_of_wrong_size_is_rejected_with_its_client():
    strategy = make_strategy(FedAvgConfig())
    params = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="client 7 has 2 parameters"):
        strategy.aggregate(strategy.init(params), params, [_update(7, [1.0, 2.0], 1)])


def test_state_round_trips_through_arrays():
    strategy = make_strategy(FedAvgMConfig())
    state = strategy.init(np.ones(4, dtype=np.float32))
    back = state_from_arrays(strategy, state_to_arrays(state))
    np.testing.assert_array_equal(back.velocity, state.velocity)
