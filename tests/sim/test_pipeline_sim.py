"""The update pipeline inside simulated runs: measured bytes, DP accounting, determinism, resume."""

from dataclasses import replace

import numpy as np
import pytest
import yaml

from fedrl.core.privacy import epsilon
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import parse_config, to_yaml
from fedrl.sim import run as runs
from fedrl.sim.plots import plot_run
from fedrl.sim.rundir import ROUND_COLUMNS, column

COMPRESSED = {"compression": {"sparsify": "topk", "ratio": 0.01, "bits": 8, "error_feedback": True}}
CENTRAL = {"clip_norm": 0.5, "dp": {"mode": "central", "noise_multiplier": 1.0}}
LOCAL = {"clip_norm": 0.5, "dp": {"mode": "local", "noise_multiplier": 2.0}}


def _with(tiny_config, pipeline, **federation):
    return {**tiny_config, "pipeline": pipeline, "federation": {**tiny_config["federation"], **federation}}


def _run(config: dict, path):
    """A run taken to its end, holding its final state."""
    current = runs.start(parse_config(config), path)
    *_, (_, final) = current.rounds()
    return replace(current, state=final)


def _column(run, name):
    return column(run.dir.rounds(), name)


def _metrics(run):
    """Every round metric except wall-clock time."""
    return np.delete(np.array(run.dir.rounds(), dtype=np.float64), ROUND_COLUMNS.index("wall_s"), axis=1)


def test_a_compressed_run_sends_measured_bytes_far_below_dense(tmp_path, tiny_config):
    # Prepare / Execute
    dense = _run(tiny_config, tmp_path / "dense")
    small = _run(_with(tiny_config, COMPRESSED), tmp_path / "small")
    # Assert: dense sends 24 header bytes + 4 per parameter, from each of the 3 clients
    dim = dense.setup.net.spec.dim
    np.testing.assert_array_equal(_column(dense, "uplink_bytes"), 3 * (24 + 4 * dim))
    np.testing.assert_array_equal(_column(dense, "compression_ratio"), 1.0)
    # top-1% of each tensor (at least 1) + 8-bit: k uint16 indices, k codes, one block's lo and step
    k = sum(max(1, round(0.01 * size)) for size in dense.setup.net.spec.sizes)
    np.testing.assert_array_equal(_column(small, "uplink_bytes_per_client"), 24 + 2 * k + k + 8)
    np.testing.assert_allclose(_column(small, "compression_ratio"), (24 + 4 * dim) / (24 + 3 * k + 8))
    assert (_column(small, "compression_ratio") > 80).all()
    np.testing.assert_array_equal(_column(small, "downlink_bytes"), _column(dense, "downlink_bytes"))
    assert np.isinf(_column(small, "epsilon")).all()
    assert runs.finish(small, small.state)["uplink_bytes"] == int(_column(small, "uplink_bytes").sum())


def test_same_seed_same_numbers_with_compression_and_central_dp(tmp_path, tiny_config):
    pipeline = {**COMPRESSED, **CENTRAL}
    a = _run(_with(tiny_config, pipeline), tmp_path / "a")
    b = _run(_with(tiny_config, pipeline), tmp_path / "b")
    np.testing.assert_array_equal(np.nan_to_num(_metrics(a)), np.nan_to_num(_metrics(b)))


@pytest.mark.parametrize(
    "pipeline", [COMPRESSED, {**COMPRESSED, **LOCAL}], ids=["error-feedback", "error-feedback+local-dp"]
)
def test_resume_with_client_pipeline_state_matches_an_unbroken_run(tmp_path, tiny_config, pipeline):
    # Prepare: residuals (and participation counts) live on the clients between rounds
    unbroken = _run(_with(tiny_config, pipeline, rounds=4, n_clients=4, fraction=0.5), tmp_path / "unbroken")
    _run(_with(tiny_config, pipeline, rounds=2, n_clients=4, fraction=0.5), tmp_path / "resumed")
    # Execute
    resumed = runs.resume(tmp_path / "resumed", ["federation.rounds=4"])
    assert resumed.state.pipeline_state.residual.any()
    list(resumed.rounds())  # run to the end (its final state is checked from the checkpoint below)
    # Assert
    np.testing.assert_array_equal(np.nan_to_num(_metrics(unbroken)), np.nan_to_num(_metrics(resumed)))
    final = [r.dir.load_checkpoint(r.setup, r.dir.latest_checkpoint()) for r in (unbroken, resumed)]
    np.testing.assert_array_equal(final[0].params, final[1].params)
    np.testing.assert_array_equal(final[0].pipeline_state.residual, final[1].pipeline_state.residual)


def test_central_dp_reports_the_accountants_epsilon_and_samples_by_poisson(tmp_path, tiny_config):
    # Prepare / Execute: 8 clients, each sampled with probability 0.5 per round
    run = _run(_with(tiny_config, CENTRAL, n_clients=8, fraction=0.5, rounds=4), tmp_path / "central")
    # Assert
    np.testing.assert_allclose(_column(run, "epsilon"), [epsilon(1.0, 0.5, r, 1e-5) for r in (1, 2, 3, 4)])
    assert len(set(_column(run, "n_sampled"))) > 1  # Poisson: the count varies from round to round
    assert any(p.endswith("privacy.png") for p in runs.finish(run, run.state, plot_run)["plots"])


def test_local_dp_reports_the_epsilon_of_the_client_that_took_part_most(tmp_path, tiny_config):
    run = _run(_with(tiny_config, LOCAL, n_clients=4, fraction=0.5, rounds=3), tmp_path / "local")
    most = run.state.pipeline_state.most_participation
    assert _column(run, "epsilon")[-1] == epsilon(2.0, 1.0, int(most), 1e-5)


def test_a_run_whose_rounds_exceed_the_target_epsilon_refuses_to_start(tiny_config):
    pipeline = {"clip_norm": 1.0, "dp": {"mode": "central", "noise_multiplier": 1.0, "target_epsilon": 4.0}}
    with pytest.raises(ConfigError, match=r"pipeline\.dp\.target_epsilon = 4\.0: 60 rounds .* at most \d+ rounds fit"):
        parse_config(_with(tiny_config, pipeline, rounds=60, n_clients=10, fraction=0.1))
    assert parse_config(_with(tiny_config, pipeline, rounds=10, n_clients=10, fraction=0.1))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strategy": {"name": "fedavg", "robust": {"rule": "median"}}}, "strategy.robust.rule must be mean"),
        ({"strategy": {"name": "fedasync"}}, "synchronous rounds only"),
    ],
)
def test_pipelines_the_run_cannot_honour_are_refused(tiny_config, change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**_with(tiny_config, CENTRAL), **change})


@pytest.mark.parametrize("pipeline", [{}, COMPRESSED, {"compression": {"bits": 4, "block": 64}}, CENTRAL, LOCAL])
def test_a_resolved_pipeline_reads_back_as_itself(tiny_config, pipeline):
    # every default is written out (to_yaml), and a resumed run must accept it
    config = parse_config(_with(tiny_config, pipeline))
    assert parse_config(yaml.safe_load(to_yaml(config))) == config
