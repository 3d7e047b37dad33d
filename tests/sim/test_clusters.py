"""Clustered federation (IFCA): a fleet of two kinds of device gets a model per kind."""

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

import fedrl
from fedrl.cli import app
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import apply_override, parse_config
from fedrl.server.config import load_server_config
from fedrl.sim import run as runs

# five CartPoles, and five whose motor is wired the other way round: no one policy suits both
TWO_KINDS = {
    "name": "two-kinds",
    "seed": 0,
    "env": {
        "family": "cartpole",
        "clients": [
            {"force_mag": sign * force, "length": length}
            for sign in (1.0, -1.0)
            for force, length in ((10.0, 0.3), (10.0, 0.5), (10.0, 0.7), (12.0, 0.4), (8.0, 0.6))
        ],
    },
    "learner": {"name": "ppo", "lr": 0.0025, "normalize": {"obs": True, "reward": True}},
    "federation": {"n_clients": 10, "rounds": 6, "clusters": 2, "stop_at_target": False},
    "eval": {"episodes": 2, "heldout_clients": 4},
}


def _config(*overrides, base=TWO_KINDS):
    data = base
    for assignment in overrides:
        data = apply_override(data, assignment)
    return parse_config(data)


def _run(config, path):
    current = runs.start(config, path)
    *_, (result, state) = current.rounds()
    return current, result, state


def test_two_kinds_of_device_part_into_two_models_each_solving_its_kind(tmp_path):
    current, result, state = _run(_config(), tmp_path / "r")
    chosen = state.clusters.assignment
    assert len(set(chosen[:5])) == 1 and len(set(chosen[5:])) == 1 and chosen[0] != chosen[5]
    assert result.global_mean_return > 450 and result.worst_client_return > 300
    summary = runs.finish(current, state)
    assert summary["cluster_sizes"] == [5, 5]
    for k in (0, 1):
        saved = fedrl.load_policy(tmp_path / "r" / f"cluster_{k}_policy.safetensors")
        np.testing.assert_array_equal(saved.params, state.clusters.params[k])
    np.testing.assert_array_equal(fedrl.load_policy(tmp_path / "r").params, state.params)
    evaluated = CliRunner().invoke(app, ["eval", str(tmp_path / "r"), "--clients", "heldout:4", "--episodes", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "each client's model of 2" in evaluated.output


def test_a_resumed_clustered_run_ends_where_an_unbroken_one_does(tmp_path):
    small = ("learner.n_envs=4", "learner.n_steps=32", "federation.local_steps=256", "strategy.name=fedavgm")
    _, _, whole = _run(_config(*small, "federation.rounds=3"), tmp_path / "whole")
    _run(_config(*small, "federation.rounds=2"), tmp_path / "part")
    resumed = runs.resume(tmp_path / "part", ["federation.rounds=3"])
    *_, (_, again) = resumed.rounds()
    np.testing.assert_array_equal(whole.clusters.params, again.clusters.params)
    np.testing.assert_array_equal(whole.clusters.assignment, again.clusters.assignment)
    for a, b in zip(whole.clusters.strategy_states, again.clusters.strategy_states):  # each model's own momentum
        np.testing.assert_array_equal(a.velocity, b.velocity)
    assert not np.array_equal(*(s.velocity for s in whole.clusters.strategy_states))
    checkpoint = load_file(str(resumed.dir.latest_checkpoint()))
    assert {"clusters.params", "clusters.assignment"} <= checkpoint.keys()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (("strategy.name=fedbuff",), "fedbuff has no rounds"),
        (("pipeline.secure_aggregation.enabled=true",), "secure sum of its own"),
        (("strategy.name=scaffold", "strategy.n_clients=10"), "SCAFFOLD"),
        (("personalization.steps=100",), "fine-tuning"),
        (("eval.adapt_steps=[0, 100]",), "fine-tuning"),
        (("learner.federate=critic",), "never trains"),
        (("learner.federate=none",), "never trains"),
        (("pipeline.compression.sparsify=topk", "pipeline.compression.error_feedback=true"), "one residual per client"),
    ],
)
def test_clustering_is_refused_where_it_is_not_implemented(overrides, reason):
    with pytest.raises(ConfigError, match="federation.clusters") as err:
        _config("learner.normalize={}", *overrides)
    assert reason in str(err.value)


def test_more_models_than_clients_is_refused():
    with pytest.raises(ConfigError, match="federation.clusters.*more models than the 10 clients"):
        _config("federation.clusters=11")


def test_a_deployed_server_refuses_clustering():
    with pytest.raises(ConfigError, match="experiment.federation.clusters.*one model"):
        load_server_config(None, ["experiment.federation.clusters=2"])
