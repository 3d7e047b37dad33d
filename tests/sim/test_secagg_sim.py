"""Secure aggregation inside simulated runs: same model as in the clear (to quantization error),
dropout recovery, rounds below the threshold, measured bytes, resume, refused configs."""

from dataclasses import replace

import numpy as np
import pytest
import yaml

from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import parse_config, to_yaml
from fedrl.sim import run as runs
from fedrl.sim.rundir import ROUND_COLUMNS, column

SCALE = 2.0**16
CLIPPED = {"clip_norm": 1.0}
SECURE = {**CLIPPED, "secure_aggregation": {"enabled": True, "clip": 1.0, "scale": SCALE}}
# 4 clients, one of them 5x slower: 256 steps take it 1.38 s, past the 1 s deadline (the others 0.36 s)
STRAGGLER = {"straggler_fraction": 0.25, "straggler_slowdown": 5.0, "deadline_s": 1.0}


def _config(tiny_config, pipeline, fleet=None, **federation):
    config = {**tiny_config, "pipeline": pipeline, "federation": {**tiny_config["federation"], **federation}}
    return config if fleet is None else {**config, "fleet": fleet}


def _params_by_round(config: dict, path) -> list[np.ndarray]:
    """The global params after each round of a run taken to its end."""
    return [state.params for _, state in runs.start(parse_config(config), path).rounds()]


def _run(config: dict, path):
    """A run taken to its end, holding its final state."""
    current = runs.start(parse_config(config), path)
    *_, (_, final) = current.rounds()
    return replace(current, state=final)


def _column(run, name):
    return column(run.dir.rounds(), name)


def test_secure_fedavg_ends_within_quantization_error_of_fedavg_in_the_clear(tmp_path, tiny_config):
    # Prepare: clip_norm 1 <= secagg clip 1, so quantization is the only difference
    clear = _params_by_round(_config(tiny_config, CLIPPED, rounds=2), tmp_path / "clear")
    # Execute
    secure = _params_by_round(_config(tiny_config, SECURE, rounds=2), tmp_path / "secure")
    # Assert: round 1's mean is off by at most half a level, 1 / (2 scale), plus float32 rounding;
    # round 2 trains from that slightly different model, and the two rounds' error measured 1.7-3.2
    # half levels over seeds 0-5: allow 4 per round
    step = 1 / (2 * SCALE)
    np.testing.assert_allclose(secure[0], clear[0], rtol=4 * np.finfo(np.float32).eps, atol=step)
    np.testing.assert_allclose(secure[1], clear[1], rtol=4 * np.finfo(np.float32).eps, atol=2 * 4 * step)
    assert np.abs(clear[1] - clear[0]).max() > 100 * 8 * step  # the second round did move the model, far more


@pytest.mark.parametrize(
    "dp",
    [{"mode": "central", "noise_multiplier": 1.0}, {"mode": "local", "noise_multiplier": 0.1}],
    ids=["central-dp", "local-dp"],
)
def test_secure_aggregation_composes_with_dp(tmp_path, tiny_config, dp):
    # Prepare: fraction 1, so central DP's Poisson sampling takes all 3 clients; the server's noise
    # and each client's (std 0.1, well within clip 1) come from the same streams in both runs
    clear = _params_by_round(_config(tiny_config, {**CLIPPED, "dp": dp}, rounds=1), tmp_path / "clear")
    # Execute
    secure = _params_by_round(_config(tiny_config, {**SECURE, "dp": dp}, rounds=1), tmp_path / "secure")
    # Assert: noise on the unmasked sum (central) or in each masked input (local), quantization aside
    np.testing.assert_allclose(secure[0], clear[0], rtol=4 * np.finfo(np.float32).eps, atol=1 / (2 * SCALE))


@pytest.mark.parametrize(
    "trouble",
    [{"fleet": STRAGGLER}, {"attack": {"fraction": 0.25, "kind": "nan"}}],
    ids=["late-client", "client-with-nan"],
)
def test_the_survivors_of_a_round_are_aggregated_when_a_client_drops_after_masking(tmp_path, tiny_config, trouble):
    # Prepare: 4 clients, t = ceil(2/3 * 4) = 3; one of them never delivers a masked input
    clear_config = {**_config(tiny_config, CLIPPED, rounds=1, n_clients=4), **trouble}
    secure_config = {**_config(tiny_config, SECURE, rounds=1, n_clients=4), **trouble}
    clear = _params_by_round(clear_config, tmp_path / "clear")
    # Execute
    run = _run(secure_config, tmp_path / "secure")
    # Assert: the other three are summed, as they are aggregated in the clear
    np.testing.assert_array_equal(_column(run, "n_updates"), [3])
    np.testing.assert_array_equal(_column(run, "secagg_threshold"), [3])
    np.testing.assert_array_equal(_column(run, "secagg_recovered"), [1])
    np.testing.assert_allclose(run.state.params, clear[0], rtol=4 * np.finfo(np.float32).eps, atol=1 / (2 * SCALE))


def test_a_round_below_the_threshold_keeps_the_old_model_and_says_so(tmp_path, tiny_config):
    # Prepare: t = 4 of 4 clients, and the straggler misses the deadline every round
    pipeline = {**SECURE, "secure_aggregation": {**SECURE["secure_aggregation"], "threshold": 4}}
    config = _config(tiny_config, pipeline, STRAGGLER, rounds=2, n_clients=4)
    # Execute
    run = _run(config, tmp_path / "below")
    # Assert
    np.testing.assert_array_equal(run.state.params, run.setup.initial_params())
    assert run.state.version == 0
    np.testing.assert_array_equal(_column(run, "secagg_recovered"), [0, 0])
    np.testing.assert_array_equal(_column(run, "secagg_threshold"), [4, 4])
    np.testing.assert_array_equal(_column(run, "n_updates"), [0, 0])
    assert np.isnan(_column(run, "uplink_bytes")).all()  # no sum, so no measured protocol to count


def test_uplink_bytes_are_the_protocols_measured_bytes_above_dense(tmp_path, tiny_config):
    # Prepare / Execute: 3 clients, none dropping
    run = _run(_config(tiny_config, SECURE, rounds=1), tmp_path / "secure")
    # Assert: docs/secure_aggregation.md's costs with n = n2 = n3 = r = 3 -- key adverts (68 bytes
    # each), sealed shares (90 per peer), masked inputs (4 + 4d), revealed shares (42 per owner)
    dim, n = run.setup.net.spec.dim, 3
    dense = n * (24 + 4 * dim)
    np.testing.assert_array_equal(
        _column(run, "uplink_bytes"), 68 * n + 90 * n * (n - 1) + (4 + 4 * dim) * n + 42 * n * n
    )
    np.testing.assert_array_equal(_column(run, "downlink_bytes"), dense + 68 * n * n + 90 * n * (n - 1) + 4 * n * n)
    assert (_column(run, "uplink_bytes") > dense).all()
    assert (_column(run, "compression_ratio") < 1).all()


def test_resume_with_secure_aggregation_matches_an_unbroken_run(tmp_path, tiny_config):
    # Prepare: the protocol's keys come from the run seed and the round
    unbroken = _run(_config(tiny_config, SECURE, STRAGGLER, rounds=3, n_clients=4), tmp_path / "unbroken")
    _run(_config(tiny_config, SECURE, STRAGGLER, rounds=2, n_clients=4), tmp_path / "resumed")
    # Execute
    resumed = runs.resume(tmp_path / "resumed", ["federation.rounds=3"])
    *_, (_, final) = resumed.rounds()
    # Assert
    np.testing.assert_array_equal(final.params, unbroken.state.params)
    rows = [
        np.delete(np.array(r.dir.rounds(), dtype=np.float64), ROUND_COLUMNS.index("wall_s"), axis=1)
        for r in (unbroken, resumed)
    ]
    np.testing.assert_array_equal(np.nan_to_num(rows[0]), np.nan_to_num(rows[1]))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"pipeline": {"secure_aggregation": {"enabled": True}, "compression": {"sparsify": "topk", "ratio": 0.1}}},
            "secure_aggregation needs compression.sparsify none and bits 32, got topk and 32",
        ),
        (
            {"pipeline": {"secure_aggregation": {"enabled": True}, "compression": {"bits": 8}}},
            "secure_aggregation needs compression.sparsify none and bits 32, got none and 8",
        ),
        (
            {"strategy": {"name": "fedavg", "robust": {"rule": "median"}}},
            "strategy.robust.rule must be mean, not 'median'",
        ),
        ({"strategy": {"name": "fedavg", "robust": {"norm_bound": 1.0}}}, "cannot clip updates it never sees"),
        ({"strategy": {"name": "scaffold"}}, "SCAFFOLD's control deltas would need a secure sum of their own"),
        ({"strategy": {"name": "fedasync"}}, "the asynchronous strategy fedasync has no rounds"),
        (
            {"federation": {"n_clients": 3, "fraction": 0.3}},
            r"federation.fraction = 0.3: .* at least 2 clients a round",
        ),
        (
            {"pipeline": {"secure_aggregation": {"enabled": True, "threshold": 4}}},
            r"pipeline.secure_aggregation.threshold = 4: exceeds the 3 clients a round samples",
        ),
        (
            {"pipeline": {"secure_aggregation": {"enabled": True, "scale": 2.0**30}}},
            r"pipeline.secure_aggregation.scale = .*would wrap around 2\^32",
        ),
    ],
)
def test_combinations_secure_aggregation_cannot_honour_are_refused(tiny_config, change, message):
    config = {**_config(tiny_config, {"secure_aggregation": {"enabled": True}}), **change}
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


def test_a_resolved_secure_pipeline_reads_back_as_itself(tiny_config):
    # every default is written out (to_yaml), and a resumed run must accept it
    config = parse_config(_config(tiny_config, {**SECURE, "secure_aggregation": {"enabled": True, "threshold": 3}}))
    assert parse_config(yaml.safe_load(to_yaml(config))) == config


def test_with_regions_each_region_runs_the_protocol_and_the_root_makes_the_flat_secure_model(tmp_path, tiny_config):
    # Prepare: 4 clients, a flat secure round and one through 2 regions of 2 (each region's own protocol)
    flat = _run(_config(tiny_config, SECURE, rounds=1, n_clients=4), tmp_path / "flat")
    # Execute
    regional = _run(_config(tiny_config, SECURE, rounds=1, n_clients=4, regions=2), tmp_path / "regions")
    # Assert: every client's update is in, through two sums of two (threshold 2, not the flat round's 3); the
    # model is the flat one (each region's mean is its own exact sum's, the root weighs the two by their steps)
    np.testing.assert_array_equal(_column(regional, "n_updates"), [4])
    np.testing.assert_array_equal(_column(regional, "secagg_recovered"), [1])
    np.testing.assert_array_equal(_column(regional, "secagg_threshold"), [2])
    np.testing.assert_allclose(regional.state.params, flat.state.params, rtol=1e-5, atol=2 / (2 * SCALE))
    assert _column(regional, "uplink_bytes")[0] < _column(flat, "uplink_bytes")[0]  # rosters of 2, not 4


def test_with_regions_and_unequal_step_counts_the_root_still_makes_the_flat_secure_model(tmp_path, tiny_config):
    # local_episodes: every client takes its own number of steps, and the secure mean counts survivors equally
    episodes = {"local_steps": None, "local_episodes": 2}
    flat = _run(_config(tiny_config, SECURE, rounds=1, n_clients=4, **episodes), tmp_path / "flat")
    regional = _run(_config(tiny_config, SECURE, rounds=1, n_clients=4, regions=2, **episodes), tmp_path / "regions")
    np.testing.assert_allclose(regional.state.params, flat.state.params, rtol=1e-5, atol=2 / (2 * SCALE))


def test_a_fixed_threshold_no_region_can_reach_is_refused(tiny_config):
    pipeline = {**SECURE, "secure_aggregation": {**SECURE["secure_aggregation"], "threshold": 3}}
    with pytest.raises(ConfigError, match=r"federation.regions.*threshold \(3, at least 2\) is above the 2 clients"):
        parse_config(_config(tiny_config, pipeline, n_clients=4, regions=2))
    with pytest.raises(ConfigError, match="above the 1 clients a region can have"):  # regions of one client
        parse_config(_config(tiny_config, SECURE, n_clients=4, regions=4))
    assert parse_config(_config(tiny_config, pipeline, n_clients=5, regions=2)).federation.regions == 2  # 3 and 2


def test_a_region_left_below_its_threshold_drops_its_senders_and_the_others_still_make_the_model(tmp_path, tiny_config):
    # 4 clients in 2 regions of 2; the straggler's region loses it to the deadline and has one sender left (t = 2)
    config = _config(tiny_config, SECURE, STRAGGLER, rounds=1, n_clients=4, regions=2)
    run = _run(config, tmp_path / "run")
    np.testing.assert_array_equal(_column(run, "n_updates"), [2])  # the other region's two
    np.testing.assert_array_equal(_column(run, "n_dropped"), [2])  # the late client and its stranded neighbour
    np.testing.assert_array_equal(_column(run, "secagg_recovered"), [0])
    assert run.state.version == 1  # the model was still made from the region that recovered
