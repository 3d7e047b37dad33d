import numpy as np
import pytest

from fedrl.core.fedopt import FedAdagradConfig, FedAdamConfig, FedYogiConfig
from fedrl.core.strategies import make_strategy
from fedrl.core.update import Update


def _update(cid, delta, steps=1):
    return Update(client_id=cid, base_version=0, delta=np.asarray(delta, dtype=np.float32), env_steps=steps)


def _two_rounds(config, round_1, round_2):
    strategy = make_strategy(config)
    params = np.zeros(2, dtype=np.float32)
    state = strategy.init(params)
    params_1, state_1 = strategy.aggregate(state, params, round_1)
    params_2, state_2 = strategy.aggregate(state_1, params_1, round_2)
    return (state, params_1, state_1, params_2, state_2)


def test_fedadam_two_rounds_by_hand():
    # Prepare: beta1 = beta2 = 0.5, tau = 1 (v starts at 1), eta = 1
    config = FedAdamConfig(server_lr=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    # round 1: step-weighted mean of [10, 4] (100 steps) and [6, 0] (300 steps) = [7, 1]
    round_1 = [_update(0, [10, 4], 100), _update(1, [6, 0], 300)]
    round_2 = [_update(2, [5, -7])]
    # Execute
    state_0, params_1, state_1, params_2, state_2 = _two_rounds(config, round_1, round_2)
    # Assert round 1: m = 0.5*[7, 1] = [3.5, 0.5]; v = 0.5*1 + 0.5*[49, 1] = [25, 1]
    #   x = [3.5/(5+1), 0.5/(1+1)] = [7/12, 1/4]
    np.testing.assert_allclose(state_0.v, [1.0, 1.0])
    np.testing.assert_allclose(state_1.m, [3.5, 0.5])
    np.testing.assert_allclose(state_1.v, [25.0, 1.0])
    np.testing.assert_allclose(params_1, [7 / 12, 1 / 4], rtol=1e-6)
    # round 2: m = 0.5*[3.5, 0.5] + 0.5*[5, -7] = [4.25, -3.25]; v = 0.5*[25, 1] + 0.5*[25, 49] = [25, 25]
    #   x = [7/12 + 4.25/6, 1/4 - 3.25/6] = [31/24, -7/24]
    np.testing.assert_allclose(state_2.m, [4.25, -3.25])
    np.testing.assert_allclose(state_2.v, [25.0, 25.0])
    np.testing.assert_allclose(params_2, [31 / 24, -7 / 24], rtol=1e-6)
    assert params_2.dtype == np.float32 and state_2.v.dtype == np.float32


def test_fedyogi_two_rounds_by_hand():
    # Prepare: beta1 = beta2 = 0.5, tau = 1, eta = 1
    config = FedYogiConfig(server_lr=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    # Execute
    _, params_1, state_1, params_2, state_2 = _two_rounds(config, [_update(0, [4, 1])], [_update(0, [-2, 4])])
    # Assert round 1: Delta^2 = [16, 1], sign(v - Delta^2) = [-1, 0] -> v = [1 + 0.5*16, 1] = [9, 1]
    #   m = [2, 0.5]; x = [2/(3+1), 0.5/(1+1)] = [0.5, 0.25]
    np.testing.assert_allclose(state_1.v, [9.0, 1.0])
    np.testing.assert_allclose(params_1, [0.5, 0.25])
    # round 2: Delta^2 = [4, 16], sign = [+1, -1] -> v = [9 - 0.5*4, 1 + 0.5*16] = [7, 9]
    #   m = 0.5*[2, 0.5] + 0.5*[-2, 4] = [0, 2.25]; x = [0.5 + 0, 0.25 + 2.25/(3+1)] = [0.5, 0.8125]
    np.testing.assert_allclose(state_2.v, [7.0, 9.0])
    np.testing.assert_allclose(state_2.m, [0.0, 2.25])
    np.testing.assert_allclose(params_2, [0.5, 0.8125])


def test_fedadagrad_two_rounds_by_hand():
    # Prepare: beta1 = 0.5, tau = 1, eta = 1
    config = FedAdagradConfig(server_lr=1.0, beta1=0.5, tau=1.0)
    # Execute
    _, params_1, state_1, params_2, state_2 = _two_rounds(config, [_update(0, [0.75, 0])], [_update(0, [-3, 0.75])])
    # Assert round 1: v = 1 + [0.5625, 0] = [1.5625, 1] (sqrt 1.25, 1); m = [0.375, 0]
    #   x = [0.375/2.25, 0] = [1/6, 0]
    np.testing.assert_allclose(state_1.v, [1.5625, 1.0])
    np.testing.assert_allclose(params_1, [1 / 6, 0.0], rtol=1e-6)
    # round 2: v = [1.5625 + 9, 1 + 0.5625] = [10.5625, 1.5625] (sqrt 3.25, 1.25)
    #   m = [0.1875 - 1.5, 0 + 0.375] = [-1.3125, 0.375]
    #   x = [1/6 - 1.3125/4.25, 0 + 0.375/2.25] = [-29/204, 1/6]
    np.testing.assert_allclose(state_2.v, [10.5625, 1.5625])
    np.testing.assert_allclose(state_2.m, [-1.3125, 0.375])
    np.testing.assert_allclose(params_2, [-29 / 204, 1 / 6], rtol=1e-6)


@pytest.mark.parametrize(
    ("config", "step"), [(FedAdamConfig(), 0.1), (FedYogiConfig(), 0.1), (FedAdagradConfig(), 0.03)]
)
def test_the_default_first_step_is_the_same_size_for_every_coordinate(config, step):
    # Prepare: deltas of very different scales, large against tau
    strategy = make_strategy(config)
    params = np.zeros(2, dtype=np.float32)
    # Execute
    new, _ = strategy.aggregate(strategy.init(params), params, [_update(0, [5.0, -20.0])])
    # Assert: eta (1 - beta1)/sqrt(1 - beta2) (Adam, Yogi: 0.1); eta (1 - beta1) (Adagrad: 0.03)
    np.testing.assert_allclose(new, [step, -step], rtol=0.03)


def test_fedopt_defaults():
    # server learning rates from benchmarks/fedopt_defaults.py's sweep on federated PPO (docs/benchmarks.md)
    assert (FedAdamConfig().server_lr, FedAdamConfig().beta1, FedAdamConfig().beta2, FedAdamConfig().tau) == (
        0.1,
        0.9,
        0.99,
        1e-2,
    )
    assert (FedYogiConfig().server_lr, FedYogiConfig().tau, FedYogiConfig().beta2) == (0.1, 1e-3, 0.99)
    assert (FedAdagradConfig().server_lr, FedAdagradConfig().tau) == (0.3, 1e-2)
    assert "beta2" not in FedAdagradConfig.model_fields


def test_fedopt_without_updates_changes_nothing():
    strategy = make_strategy(FedAdamConfig())
    params = np.ones(2, dtype=np.float32)
    state = strategy.init(params)
    new, new_state = strategy.aggregate(state, params, [])
    assert new is params and new_state is state
