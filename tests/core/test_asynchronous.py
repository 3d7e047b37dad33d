import numpy as np
import pytest
from pydantic import ValidationError

from fedrl.core.asynchronous import FedAsyncConfig, FedBuffConfig, VersionState
from fedrl.core.robust import RobustConfig
from fedrl.core.staleness import StalenessConfig
from fedrl.core.strategies import make_strategy
from fedrl.core.update import Update


def _update(cid, base, delta, steps=1):
    return Update(cid, base, np.asarray(delta, dtype=np.float32), steps)


def test_fedasync_by_hand():
    # Prepare: alpha = 0.5, s(tau) = 1/(1 + tau)
    strategy = make_strategy(FedAsyncConfig(alpha=0.5, staleness=StalenessConfig(kind="polynomial", a=1.0)))
    params = np.zeros(2, dtype=np.float32)
    state = strategy.init(params)
    # Execute / Assert: a fresh update (tau = 0): x = 0.5*[2, -4] = [1, -2], version 1
    params, state = strategy.aggregate(state, params, [_update(0, 0, [2, -4])])
    np.testing.assert_allclose(params, [1.0, -2.0])
    assert int(state.version) == 1
    # an update based on version 0 (tau = 1): x = [1, -2] + 0.5*0.5*[4, 4] = [2, -1], version 2
    params, state = strategy.aggregate(state, params, [_update(1, 0, [4, 4])])
    np.testing.assert_allclose(params, [2.0, -1.0])
    # no update still makes a new (identical) version
    same, state = strategy.aggregate(state, params, [])
    np.testing.assert_array_equal(same, params)
    assert int(state.version) == 3 and state.version.shape == () and state.version.dtype == np.int64


def test_fedasync_clips_to_norm_bound():
    strategy = make_strategy(
        FedAsyncConfig(alpha=1.0, staleness=StalenessConfig(kind="constant"), robust=RobustConfig(norm_bound=1.0))
    )
    params = np.zeros(2, dtype=np.float32)
    new, _ = strategy.aggregate(strategy.init(params), params, [_update(0, 0, [3, 4])])
    np.testing.assert_allclose(new, [0.6, 0.8], rtol=1e-6)


def test_fedasync_takes_one_update_per_call_and_no_rule():
    strategy = make_strategy(FedAsyncConfig())
    params = np.zeros(1, dtype=np.float32)
    assert strategy.buffer_size == 1 and FedAsyncConfig().alpha == 0.6
    with pytest.raises(ValueError, match="one update per call"):
        strategy.aggregate(strategy.init(params), params, [_update(0, 0, [1]), _update(1, 0, [1])])
    with pytest.raises(ValidationError, match="one update at a time"):
        FedAsyncConfig(robust=RobustConfig(rule="median"))


def test_update_from_a_future_version_raises():
    strategy = make_strategy(FedAsyncConfig())
    params = np.zeros(1, dtype=np.float32)
    with pytest.raises(ValueError, match="client 3 is based on version 2, the server is at version 0"):
        strategy.aggregate(strategy.init(params), params, [_update(3, 2, [1])])


def _fedbuff(**fields):
    hinge = StalenessConfig(kind="hinge", a=1, b=1)
    return make_strategy(FedBuffConfig(buffer_size=3, server_lr=2.0, staleness=hinge, **fields))


def test_fedbuff_by_hand():
    # Prepare: at version 3, bases 3, 2, 0 -> tau 0, 1, 3 -> s = 1, 1 (tau <= b = 1), 1/(1*(3-1)+1) = 1/3
    strategy = _fedbuff()
    params = np.ones(2, dtype=np.float32)
    buffer = [_update(0, 3, [1, 0]), _update(1, 2, [2, 2]), _update(2, 0, [9, -6])]
    # Execute
    new, state = strategy.aggregate(VersionState(np.array(3, dtype=np.int64)), params, buffer)
    # Assert: scaled [1, 0], [2, 2], [3, -2] -> mean [2, 0]; x = [1, 1] + 2*[2, 0] = [5, 1]
    np.testing.assert_allclose(new, [5.0, 1.0])
    assert int(state.version) == 4 and strategy.buffer_size == 3


def test_fedbuff_applies_its_rule_to_the_scaled_deltas():
    # Prepare: the third delta is an outlier; scaled [1, 0], [2, 2], [100, -2]
    buffer = [_update(0, 3, [1, 0]), _update(1, 2, [2, 2]), _update(2, 0, [300, -6])]
    params = np.ones(2, dtype=np.float32)
    state = VersionState(np.array(3, dtype=np.int64))
    # Execute
    mean, _ = _fedbuff().aggregate(state, params, buffer)
    median, _ = _fedbuff(robust=RobustConfig(rule="median")).aggregate(state, params, buffer)
    # Assert: mean [103/3, 0] -> x = [1 + 206/3, 1]; median [2, 0] -> x = [5, 1]
    np.testing.assert_allclose(mean, [1 + 206 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(median, [5.0, 1.0])


def test_fedbuff_config_defaults_and_checks():
    config = FedBuffConfig()
    assert (config.buffer_size, config.server_lr) == (10, 1.0)
    assert (config.staleness.kind, config.staleness.a) == ("polynomial", 0.5)
    with pytest.raises(ValidationError, match="needs buffer_size > 4"):
        FedBuffConfig(buffer_size=4, robust=RobustConfig(rule="krum", byzantine=1))
    with pytest.raises(ValidationError, match="exceeds buffer_size"):
        FedBuffConfig(buffer_size=4, robust=RobustConfig(rule="multikrum", multikrum_m=5))
