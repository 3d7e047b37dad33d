"""The simulated fleet: dropouts, deadlines, attackers, SCAFFOLD, DQN, asynchronous rounds."""

import numpy as np
import pytest

from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import parse_config
from fedrl.sim import run as runs
from fedrl.sim.engine import initial_state, run_round
from fedrl.sim.setup import SimSetup


def _cfg(tiny_config, **sections):
    data = {**tiny_config, "federation": {**tiny_config["federation"], "n_clients": 10}}
    for key, value in sections.items():
        replaces = key in ("learner", "strategy") and value.get("name") != data.get(key, {}).get("name", "fedavg")
        data[key] = value if replaces else {**data.get(key, {}), **value}
    return parse_config(data)


def _rounds(config, n):
    setup = SimSetup(config)
    state = initial_state(setup)
    results = []
    for _ in range(n):
        result, state = run_round(setup, state)
        results.append(result)
    return setup, state, results


def test_dropouts_are_counted_and_never_aggregated(tiny_config):
    _, _, results = _rounds(_cfg(tiny_config, fleet={"dropout": 0.5}), 2)
    for r in results:
        assert r.stats.n_sampled == 10 and r.stats.n_dropped > 0
        assert r.stats.n_updates + r.stats.n_dropped == 10


def test_deadline_drops_the_stragglers_updates(tiny_config):
    fleet = {
        "straggler_fraction": 0.3,
        "straggler_slowdown": 5.0,
        "step_time_s": 0.001,
        "latency_s": 0.0,
        "deadline_s": 0.256 * 2,
    }  # 256 steps take 0.256 s on a normal device, 1.28 s on a straggler
    setup, state, results = _rounds(_cfg(tiny_config, fleet=fleet), 1)
    assert setup.fleet.straggler.sum() == 3
    assert results[0].stats.n_dropped == 3 and results[0].stats.n_updates == 7
    assert state.sim_time_s == pytest.approx(0.512)


def test_nan_attackers_are_rejected_and_the_model_stays_finite(tiny_config):
    setup, state, results = _rounds(_cfg(tiny_config, attack={"fraction": 0.3, "kind": "nan"}), 2)
    assert setup.malicious.sum() == 3
    assert all(r.stats.n_rejected == 3 and r.stats.n_updates == 7 for r in results)
    assert np.isfinite(state.params).all()


def test_sign_flip_attackers_with_a_robust_rule(tiny_config):
    config = _cfg(
        tiny_config,
        attack={"fraction": 0.2, "kind": "sign_flip", "scale": 5.0},
        strategy={"name": "fedavg", "robust": {"rule": "median"}},
    )
    _, state, results = _rounds(config, 2)
    assert results[-1].stats.n_updates == 10 and np.isfinite(state.params).all()


def test_scaffold_runs_with_control_variates_and_resumes_exactly(tmp_path, tiny_config):
    config = _cfg(tiny_config, strategy={"name": "scaffold"}, federation={"rounds": 3})
    assert config.strategy.n_clients == 10
    setup, state, _ = _rounds(config, 1)
    assert np.abs(state.strategy_state.c).sum() > 0
    assert state.client_state.control.shape == (10, setup.net.spec.dim)
    _resume_matches(tmp_path, config)


def test_dqn_keeps_its_replay_buffer_across_rounds_and_checkpoints(tmp_path, tiny_config):
    config = _cfg(
        tiny_config,
        learner={"name": "dqn", "n_envs": 4, "hidden": [32, 32], "learning_starts": 128, "buffer_size": 2000},
        federation={"rounds": 3},
    )
    _, state, _ = _rounds(config, 2)
    assert (state.client_state.dqn.replay.size == 512).all()
    _resume_matches(tmp_path, config)


def test_asynchronous_fedbuff_reports_staleness_and_resumes_exactly(tmp_path, tiny_config):
    config = _cfg(
        tiny_config,
        strategy={"name": "fedbuff", "buffer_size": 3},
        fleet={"straggler_fraction": 0.2, "speed_heterogeneity": 1.0},
        federation={"rounds": 3},
    )
    _setup, state, results = _rounds(config, 2)
    assert all(r.stats.n_sampled == 10 for r in results)
    assert state.version == int(state.strategy_state.version) >= 6
    assert results[-1].stats.mean_staleness > 0
    assert results[-1].sim_time_s > results[0].sim_time_s > 0
    _resume_matches(tmp_path, config)


def test_fedbuff_aggregates_every_arrival_even_two_of_one_fast_client_in_one_buffer(tiny_config):
    # a buffer of 9 out of 10 clients whose speeds spread 4x: fast clients arrive again before it fills
    config = _cfg(tiny_config, strategy={"name": "fedbuff", "buffer_size": 9}, fleet={"speed_heterogeneity": 1.0})
    _, state, results = _rounds(config, 4)
    arrived = sum(r.stats.n_sampled for r in results)
    aggregated = sum(r.stats.n_updates + r.stats.n_rejected for r in results)
    assert aggregated + state.inflight.buffered == arrived
    clients = state.inflight.buffer_client[: state.inflight.buffered]
    assert state.version == aggregated // 9 and len(clients) == arrived % 9


@pytest.mark.parametrize("size", [1, 7])
def test_a_fedbuff_run_resumed_with_another_buffer_size_keeps_what_its_buffer_held(tmp_path, tiny_config, size):
    config = _cfg(tiny_config, strategy={"name": "fedbuff", "buffer_size": 4}, fleet={"speed_heterogeneity": 1.0})
    first = runs.start(config, tmp_path / "r")
    result, state = next(iter(first.rounds()))
    assert result.round == 1
    held = state.inflight.buffered
    assert held > size or size > 4  # 1: the buffer holds more than the new size; 7: it must grow
    resumed = runs.resume(tmp_path / "r", [f"strategy.buffer_size={size}", "federation.rounds=2"])
    (result, after), *_ = resumed.rounds()
    aggregated = result.stats.n_updates + result.stats.n_rejected
    assert aggregated + after.inflight.buffered == held + result.stats.n_sampled  # nothing lost or counted twice
    assert after.inflight.buffered < size and after.version - state.version == aggregated // size


def test_fedasync_applies_every_arrival(tiny_config):
    config = _cfg(tiny_config, strategy={"name": "fedasync"}, fleet={"dropout": 0.2})
    _, state, results = _rounds(config, 1)
    assert state.version == 10 and results[0].stats.n_updates == 10


def test_partial_federation_evaluates_each_clients_own_actor(tiny_config):
    config = _cfg(tiny_config, learner={"name": "a2c", "federate": "critic", "n_envs": 4, "hidden": [32, 32]})
    setup, state, results = _rounds(config, 1)
    assert not setup.federated.all()
    assert np.isfinite(results[0].client_returns).all()
    assert np.isfinite(state.client_state.personal).all()


def test_the_strategy_alone_says_whether_a_run_is_asynchronous(tiny_config):
    assert _cfg(tiny_config, strategy={"name": "fedasync"}).asynchronous
    assert not _cfg(tiny_config, strategy={"name": "fedavgm"}).asynchronous
    with pytest.raises(ConfigError, match="fleet.mode = 'async': removed: the strategy decides"):
        _cfg(tiny_config, fleet={"mode": "async"})


def _resume_matches(tmp_path, config):
    """A run stopped after round 1 and resumed gives the same numbers as an unbroken one."""

    def metrics(run):
        rows = np.array(run.dir.rounds(), dtype=np.float64)
        return np.nan_to_num(np.delete(rows, 2, axis=1))

    unbroken = runs.start(config, tmp_path / "unbroken")
    list(unbroken.rounds())  # run to the end
    broken = runs.start(config, tmp_path / "broken")
    for result, _ in broken.rounds():
        if result.round == 1:
            break
    resumed = runs.resume(tmp_path / "broken")
    assert resumed.state.round == 1
    list(resumed.rounds())  # run to the end
    np.testing.assert_array_equal(metrics(unbroken), metrics(resumed))
