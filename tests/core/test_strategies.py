import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from safetensors.numpy import load, save

from fedrl.core.robust import RobustConfig
from fedrl.core.strategies import (
    STRATEGY_CONFIGS,
    FedAvgConfig,
    FedAvgMConfig,
    ReptileConfig,
    StrategyConfig,
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


def test_reptile_meta_steps_by_hand_with_the_step_size_annealed_to_zero():
    strategy = make_strategy(ReptileConfig(meta_lr=0.8, anneal_rounds=4))
    params = np.zeros(1, dtype=np.float32)
    state = strategy.init(params)
    seen = []
    for _ in range(5):  # eps = 0.8, 0.6, 0.4, 0.2, then 0 from the fifth meta-step on
        params, state = strategy.aggregate(state, params, [_update(0, [1.0], 1), _update(1, [3.0], 1)])
        seen.append(float(params[0]))
    np.testing.assert_allclose(seen, [1.6, 2.8, 3.6, 4.0, 4.0], rtol=1e-6)
    assert int(state.steps) == 5


def test_reptile_with_a_constant_unit_step_is_fedavg():
    params = np.array([0.5, -0.5], dtype=np.float32)
    updates = [_update(0, [1.0, 2.0], 10), _update(1, [3.0, -2.0], 30)]
    avg, reptile = make_strategy(FedAvgConfig()), make_strategy(ReptileConfig())
    a, _ = avg.aggregate(avg.init(params), params, updates)
    r, _ = reptile.aggregate(reptile.init(params), params, updates)
    np.testing.assert_array_equal(a, r)


def test_fedavgm_with_zero_momentum_and_unit_lr_is_fedavg():
    params = np.array([0.5, -0.5], dtype=np.float32)
    updates = [_update(0, [1.0, 2.0], 10), _update(1, [3.0, -2.0], 30)]
    avg = make_strategy(FedAvgConfig())
    avgm = make_strategy(FedAvgMConfig(server_lr=1.0, momentum=0.0))
    a, _ = avg.aggregate(avg.init(params), params, updates)
    b, _ = avgm.aggregate(avgm.init(params), params, updates)
    np.testing.assert_allclose(a, b)


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


# --- robust rules, screening, checkpoints and config parsing, on every strategy -------------

# each strategy with the fields it needs and no more (SCAFFOLD must know the fleet size)
MINIMAL = {name: ({"n_clients": 10} if name == "scaffold" else {}) for name in STRATEGY_CONFIGS}
# each strategy with some of its optional fields set
OPTIONAL = {
    "fedavg": {"robust": {"rule": "trimmed_mean", "trim_ratio": 0.2}},
    "fedavgm": {"server_lr": 0.5, "momentum": 0.5, "robust": {"norm_bound": 2.0}},
    "fedadagrad": {"server_lr": 0.2, "beta1": 0.8, "tau": 0.01},
    "fedadam": {"beta2": 0.999, "robust": {"rule": "krum", "byzantine": 1}},
    "fedyogi": {"beta2": 0.9, "robust": {"rule": "multikrum", "byzantine": 1, "multikrum_m": 3}},
    "scaffold": {"n_clients": 10, "server_lr": 0.5},
    "fedasync": {"alpha": 0.4, "staleness": {"kind": "hinge", "a": 10, "b": 4}},
    "fedbuff": {"buffer_size": 5, "server_lr": 0.5, "staleness": {"kind": "constant"}},
    "reptile": {"meta_lr": 0.5, "anneal_rounds": 100},
}
PARSE = TypeAdapter(StrategyConfig)


def _config(name, **extra):
    return PARSE.validate_python({"name": name, **MINIMAL[name], **extra})


def _scaffold_ready(update):
    """The update with a control delta, so that SCAFFOLD accepts it too."""
    return Update(
        update.client_id,
        update.base_version,
        update.delta,
        update.env_steps,
        control_delta=np.full_like(update.delta, 0.5),
    )


@pytest.mark.parametrize("name", list(STRATEGY_CONFIGS))
def test_config_parses_from_a_dict_with_and_without_optional_fields(name):
    # Execute
    minimal = PARSE.validate_python({"name": name, **MINIMAL[name]})
    full = PARSE.validate_python({"name": name, **OPTIONAL[name]})
    # Assert
    assert type(minimal) is type(full) is STRATEGY_CONFIGS[name]
    for key, value in OPTIONAL[name].items():
        got = getattr(full, key)
        assert (got.model_dump(exclude_unset=True) if hasattr(got, "model_dump") else got) == value
    assert make_strategy(full).name == name


@pytest.mark.parametrize("name", list(STRATEGY_CONFIGS))
def test_unknown_field_raises(name):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PARSE.validate_python({"name": name, **MINIMAL[name], "learning_rate": 0.1})


def test_config_without_a_name_is_fedavg():
    assert PARSE.validate_python({}) == FedAvgConfig()
    robust = FedAvgConfig().robust
    assert robust.rule == "mean" and robust.trim_ratio == 0.1 and robust.byzantine == 0
    assert robust.multikrum_m is None and robust.norm_bound is None


def test_rule_options_must_match_the_rule():
    with pytest.raises(ValidationError, match="byzantine=1 is only used by rule krum or multikrum"):
        RobustConfig(byzantine=1)
    with pytest.raises(ValidationError, match="multikrum_m is only used by rule multikrum"):
        RobustConfig(rule="krum", multikrum_m=2)
    with pytest.raises(ValidationError, match="trim_ratio"):
        RobustConfig(rule="trimmed_mean", trim_ratio=0.5)


def test_fedavg_with_median_and_norm_bound_by_hand():
    params = np.zeros(2, dtype=np.float32)
    # median of [1, 2, 100] per coordinate, whatever the step counts
    median = make_strategy(FedAvgConfig(robust=RobustConfig(rule="median")))
    updates = [_update(0, [1, 0], 1), _update(1, [2, 0], 1), _update(2, [100, 0], 1000)]
    new, _ = median.aggregate(median.init(params), params, updates)
    np.testing.assert_allclose(new, [2.0, 0.0])
    # clip [3, 4] to norm 1 -> [0.6, 0.8]; [0, 0.5] is short enough; mean [0.3, 0.65]
    clipped = make_strategy(FedAvgConfig(robust=RobustConfig(norm_bound=1.0)))
    new, _ = clipped.aggregate(clipped.init(params), params, [_update(0, [3, 4], 1), _update(1, [0, 0.5], 1)])
    np.testing.assert_allclose(new, [0.3, 0.65], rtol=1e-6)


@pytest.mark.parametrize(
    "fields",
    [
        {"rule": "median"},
        {"rule": "trimmed_mean", "trim_ratio": 0.3},
        {"rule": "krum", "byzantine": 3},
        {"rule": "multikrum", "byzantine": 3},
    ],
)
def test_byzantine_clients_pull_fedavg_but_not_a_robust_rule(fields):
    # Prepare: 7 honest deltas near +1, 3 attackers sending -10x an honest delta and claiming many steps
    rng = np.random.default_rng(1)
    honest = (1.0 + 0.05 * rng.standard_normal((7, 3))).astype(np.float32)
    updates = [_update(i, d, 100) for i, d in enumerate(honest)]
    updates += [_update(7 + i, -10.0 * d, 1000) for i, d in enumerate(honest[:3])]
    params = np.zeros(3, dtype=np.float32)
    plain, robust = make_strategy(FedAvgConfig()), make_strategy(FedAvgConfig(robust=RobustConfig(**fields)))
    # Execute
    pulled, _ = plain.aggregate(plain.init(params), params, updates)
    held, _ = robust.aggregate(robust.init(params), params, updates)
    # Assert
    assert np.all(pulled < -5)
    np.testing.assert_allclose(held, 1.0, atol=0.15)


def _nan_cases(name):
    """An honest update and a NaN and an Inf one, ready for strategy ``name``."""
    honest = _update(0, [1.0, 2.0], 5)
    bad = [_update(1, [np.nan, 1.0], 5), _update(2, [1.0, np.inf], 5)]
    ready = _scaffold_ready if name == "scaffold" else (lambda u: u)
    return ready(honest), [ready(u) for u in bad]


@pytest.mark.parametrize("name", list(STRATEGY_CONFIGS))
def test_non_finite_updates_are_ignored_by_every_strategy(name):
    # Prepare
    strategy = make_strategy(_config(name))
    params = np.array([0.5, -0.5], dtype=np.float32)
    state = strategy.init(params)
    honest, bad = _nan_cases(name)
    for u in bad:
        # Execute: a bad update alone, and (where several are allowed) beside an honest one
        alone, _ = strategy.aggregate(state, params, [u])
        # Assert
        np.testing.assert_array_equal(alone, params)
        if name != "fedasync":
            mixed, mixed_state = strategy.aggregate(state, params, [honest, u])
            clean, clean_state = strategy.aggregate(state, params, [honest])
            np.testing.assert_array_equal(mixed, clean)
            for key, value in state_to_arrays(clean_state).items():
                np.testing.assert_array_equal(state_to_arrays(mixed_state)[key], value)
            assert np.all(np.isfinite(mixed))


@pytest.mark.parametrize("name", list(STRATEGY_CONFIGS))
def test_every_state_round_trips_through_safetensors(name):
    # Prepare: a state after one aggregation, so that it holds more than its initial values
    strategy = make_strategy(_config(name))
    params = np.array([0.5, -0.5], dtype=np.float32)
    honest, _ = _nan_cases(name)
    _, state = strategy.aggregate(strategy.init(params), params, [honest])
    # Execute
    back = state_from_arrays(strategy, load(save(state_to_arrays(state))))
    # Assert: same type, same arrays, same dtypes and shapes (the version stays a 0-d int64)
    assert type(back) is type(state)
    for key, value in state_to_arrays(state).items():
        restored = state_to_arrays(back)[key]
        assert restored.dtype == value.dtype and restored.shape == value.shape
        np.testing.assert_array_equal(restored, value)
    if name in ("fedasync", "fedbuff"):
        assert back.version.shape == () and back.version.dtype == np.int64 and int(back.version) == 1


class _Momentum:
    """A user's server optimiser: heavy-ball momentum on the combined delta."""

    def __init__(self, beta=0.5):
        self.beta = beta

    def init(self, params):
        return {"v": np.zeros_like(params)}

    def step(self, state, params, delta):
        v = self.beta * state["v"] + delta
        return params + v, {"v": v}


def test_a_users_strategy_steps_on_the_robust_rules_delta_and_checkpoints_its_state():
    config = TypeAdapter(StrategyConfig).validate_python(
        {"name": "my_opt:Momentum", "options": {"beta": 0.5}, "robust": {"rule": "median"}}
    )
    strategy = make_strategy(config, _Momentum(**config.options))
    params = np.zeros(2, np.float32)
    updates = [_update(0, [1.0, 0.0], 1), _update(1, [3.0, 2.0], 1), _update(2, [100.0, 4.0], 1)]

    state = strategy.init(params)
    params, state = strategy.aggregate(state, params, updates)  # median delta (3, 2)
    params, state = strategy.aggregate(state, params, updates)  # v = 0.5 (3, 2) + (3, 2)
    restored = state_from_arrays(strategy, load(save(state_to_arrays(state))))

    assert type(config).__name__ == "UserStrategyConfig" and not strategy.uses_control_variates
    np.testing.assert_allclose(params, [3 + 4.5, 2 + 3.0])
    np.testing.assert_array_equal(restored["v"], [4.5, 3.0])
    with pytest.raises(ValueError, match="needs its optimizer"):
        make_strategy(config)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (lambda state, params, delta: (params[:1], state), r"returned parameters of shape \(1,\).*2 finite numbers"),
        (lambda state, params, delta: (params * np.nan, state), r"\(finite: False\)"),
        (lambda state, params, delta: (params, [1, 2]), "must return its state as a dict of arrays"),
        (
            lambda state, params, delta: (params, {"t": None}),
            "returned state 't' of dtype object; a state holds numbers",
        ),
    ],
    ids=["short", "nan", "state not a dict", "state not numbers"],
)
def test_a_users_strategy_that_returns_what_does_not_fit_is_named(step, message):
    from fedrl.core.errors import UserCodeError

    optimizer = _Momentum()
    optimizer.step = step
    config = TypeAdapter(StrategyConfig).validate_python({"name": "my_opt:Broken"})
    strategy = make_strategy(config, optimizer)
    params = np.zeros(2, np.float32)

    with pytest.raises(UserCodeError, match=rf"strategy my_opt:Broken.*{message}"):
        strategy.aggregate(strategy.init(params), params, [_update(0, [1.0, 1.0], 1)])


def test_a_users_strategy_that_changes_its_state_in_place_leaves_the_kept_state_as_it_was():
    class InPlace(_Momentum):
        def step(self, state, params, delta):
            state["v"] += delta  # in place, as numpy code often does
            return params + state["v"], state

    config = TypeAdapter(StrategyConfig).validate_python({"name": "my_opt:InPlace"})
    strategy = make_strategy(config, InPlace())
    params = np.zeros(2, np.float32)
    kept = strategy.init(params)

    new_params, new_state = strategy.aggregate(kept, params, [_update(0, [1.0, 2.0], 1)])
    np.testing.assert_array_equal(new_params, [1.0, 2.0])

    np.testing.assert_array_equal(kept["v"], [0.0, 0.0])  # a rejected candidate's round can be undone
    np.testing.assert_array_equal(new_state["v"], [1.0, 2.0])
