"""Observation normalisation and reward scaling in simulated runs: the fleet's statistics are
merged by counts, checkpointed, carried by every saved policy, and refused where they cannot travel."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import fedrl
from fedrl.agents.normalize import obs_scale
from fedrl.experiment.aggregation import mean_returns
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import apply_override, parse_config
from fedrl.sim import run as runs

NORMALISED = ("learner.normalize.obs=true", "learner.normalize.reward=true")


def _config(tiny_config, *overrides):
    data = tiny_config
    for assignment in (*NORMALISED, *overrides):
        data = apply_override(data, assignment)
    return data


def test_the_fleets_statistics_hold_every_observation_any_client_trained_on_once(tmp_path, tiny_config):
    current = runs.start(parse_config(_config(tiny_config)), tmp_path / "r")
    *_, (_, state) = current.rounds()
    assert state.norm.obs.count == state.env_steps  # every client trains every round; each step seen once
    assert state.norm.returns.count == state.env_steps
    assert np.all(state.norm.obs.var > 0)


@pytest.mark.parametrize("saved", ["checkpoint", "final policy"])
def test_every_saved_policy_carries_the_statistics_evaluation_normalised_with(tmp_path, tiny_config, saved):
    path = tmp_path / "r"
    current = runs.start(parse_config(_config(tiny_config)), path)
    *_, (_, state) = current.rounds()
    runs.finish(current, state)
    source = current.dir.latest_checkpoint() if saved == "checkpoint" else path
    policy = fedrl.load_policy(source)
    norm = policy.card.obs_norm
    np.testing.assert_array_equal(np.array(norm.mean, np.float32), state.norm.obs.mean.astype(np.float32))
    np.testing.assert_array_equal(np.array(norm.var, np.float32), state.norm.obs.var.astype(np.float32))
    assert norm.clip == 10.0
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    scale = obs_scale(current.setup.config.learner.normalize, state.norm)
    net = current.setup.net
    heads = net.policy(net.unpack(torch.from_numpy(state.params)[None]), torch.from_numpy(scale.apply(obs))[None])
    np.testing.assert_array_equal(policy.predict(obs), heads.actor[0].argmax(-1).numpy())


def test_a_resumed_normalised_run_ends_where_an_unbroken_one_does(tmp_path, tiny_config):
    config = _config(tiny_config, "federation.rounds=4")
    unbroken = runs.start(parse_config(config), tmp_path / "unbroken")
    *_, (_, whole) = unbroken.rounds()
    short = runs.start(parse_config(_config(tiny_config, "federation.rounds=2")), tmp_path / "resumed")
    list(short.rounds())
    resumed = runs.resume(tmp_path / "resumed", ["federation.rounds=4"])
    assert resumed.state.norm.obs.count == resumed.state.env_steps > 0  # the statistics came back with the run
    assert np.abs(resumed.state.client_state.returns).sum() > 0  # and each environment's running return
    *_, (_, again) = resumed.rounds()
    np.testing.assert_array_equal(whole.params, again.params)
    np.testing.assert_array_equal(whole.norm.obs.mean, again.norm.obs.mean)
    np.testing.assert_array_equal(whole.norm.returns.m2, again.norm.returns.m2)


def test_without_normalisation_nothing_is_kept_or_carried(tmp_path, tiny_config):
    current = runs.start(parse_config(tiny_config), tmp_path / "r")
    *_, (_, state) = current.rounds()
    assert state.norm is None and state.client_state.returns is None
    checkpoint = current.dir.latest_checkpoint()
    assert not [k for k in load_file(str(checkpoint)) if k.startswith("normalize.")]
    assert fedrl.load_policy(checkpoint).card.obs_norm is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (("pipeline.clip_norm=1.0", "pipeline.dp.mode=local", "pipeline.dp.noise_multiplier=1.0"), "unnoised"),
    ],
)
def test_normalisation_is_refused_where_the_statistics_cannot_travel(tiny_config, overrides, reason):
    with pytest.raises(ConfigError, match="learner.normalize.obs") as err:
        parse_config(_config(tiny_config, *overrides))
    assert reason in str(err.value)


PERSONAL = "learner.normalize.stats=personal"
BUFFERED = ("strategy.name=fedbuff", "strategy.buffer_size=2", "fleet.speed_heterogeneity=1.0")


def test_asynchronously_the_fleets_statistics_hold_every_observation_of_the_flushed_updates(tmp_path, tiny_config):
    current = runs.start(parse_config(_config(tiny_config, *BUFFERED, "federation.rounds=5")), tmp_path / "r")
    *_, (_, state) = current.rounds()
    fl = state.inflight
    in_flight = fl.env_steps[np.isfinite(fl.busy_until)].sum()
    buffered = fl.buffer_steps[fl.buffer_client >= 0].sum()
    assert in_flight + buffered > 0  # some observations are still on their way to the server
    assert state.norm.obs.count == state.norm.returns.count == state.env_steps - in_flight - buffered
    assert fedrl.load_policy(current.dir.latest_checkpoint()).card.obs_norm is not None


def test_a_resumed_asynchronous_normalised_run_ends_where_an_unbroken_one_does(tmp_path, tiny_config):
    unbroken = runs.start(parse_config(_config(tiny_config, *BUFFERED, "federation.rounds=4")), tmp_path / "whole")
    *_, (_, whole) = unbroken.rounds()
    short = runs.start(parse_config(_config(tiny_config, *BUFFERED, "federation.rounds=2")), tmp_path / "resumed")
    list(short.rounds())
    resumed = runs.resume(tmp_path / "resumed", ["federation.rounds=4"])
    assert resumed.state.inflight.buffer_stats.obs.count.sum() > 0  # the checkpoint held what was on its way
    *_, (_, again) = resumed.rounds()
    np.testing.assert_array_equal(whole.params, again.params)
    np.testing.assert_array_equal(whole.norm.obs.mean, again.norm.obs.mean)
    np.testing.assert_array_equal(whole.norm.returns.m2, again.norm.returns.m2)


def test_asynchronously_personal_statistics_take_in_what_their_client_observed_at_once(tmp_path, tiny_config):
    overrides = ("strategy.name=fedasync", "fleet.speed_heterogeneity=1.0", PERSONAL)
    current = runs.start(parse_config(_config(tiny_config, *overrides)), tmp_path / "r")
    *_, (_, state) = current.rounds()
    assert state.inflight.stats is None  # nothing travels
    assert state.norm.obs.count.sum() == state.env_steps  # in flight or not, each client kept its own
    assert np.all(state.norm.obs.count > 0)


def test_personal_statistics_hold_each_clients_own_observations_and_travel_nowhere(tmp_path, tiny_config):
    # Prepare: the same run with the fleet's statistics and with personal ones
    fleet = runs.start(parse_config(_config(tiny_config)), tmp_path / "fleet")
    *_, (fleet_result, fleet_state) = fleet.rounds()
    current = runs.start(parse_config(_config(tiny_config, PERSONAL)), tmp_path / "personal")
    # Act
    *_, (result, state) = current.rounds()
    # Assert: one row per client, each counting that client's steps alone, and nothing sent beside the update
    n = current.setup.config.federation.n_clients
    assert state.norm.personal and state.norm.obs.count.shape == (n,)
    np.testing.assert_array_equal(state.norm.obs.count, np.full(n, state.env_steps / n))
    assert not np.allclose(state.norm.obs.mean[0], state.norm.obs.mean[1])  # their physics differ
    stats_bytes = n * fleet_state.norm.wire_bytes
    assert fleet_result.stats.traffic.uplink - result.stats.traffic.uplink == stats_bytes
    # the first round starts from the same untrained model: different statistics change the training
    assert not np.array_equal(fleet_state.params, state.params)


def test_each_client_is_evaluated_with_its_own_statistics_and_a_saved_policy_carries_them_pooled(tmp_path, tiny_config):
    path = tmp_path / "r"
    current = runs.start(parse_config(_config(tiny_config, PERSONAL)), path)
    *_, (result, state) = current.rounds()
    setup = current.setup
    # evaluation: each client normalises with its own row, and that differs from the pooled statistics
    episodes = setup.config.eval.episodes
    own = mean_returns(setup, state.params, setup.env_params, episodes, norm=state.norm)
    pooled = mean_returns(setup, state.params, setup.env_params, episodes, norm=state.norm.pooled())
    np.testing.assert_array_equal(result.client_returns, own)
    assert not np.array_equal(own, pooled)
    # the saved policy: every client's statistics pooled, as a new client would start
    summary = runs.finish(current, state)
    pooled = state.norm.pooled().obs
    card = fedrl.load_policy(path).card.obs_norm
    np.testing.assert_array_equal(np.array(card.mean, np.float32), pooled.mean.astype(np.float32))
    assert pooled.count == state.env_steps
    assert np.isfinite(summary["heldout_mean_return"])


def test_a_resumed_run_with_personal_statistics_ends_where_an_unbroken_one_does(tmp_path, tiny_config):
    unbroken = runs.start(parse_config(_config(tiny_config, PERSONAL, "federation.rounds=4")), tmp_path / "u")
    *_, (_, whole) = unbroken.rounds()
    list(runs.start(parse_config(_config(tiny_config, PERSONAL, "federation.rounds=2")), tmp_path / "r").rounds())
    resumed = runs.resume(tmp_path / "r", ["federation.rounds=4"])
    *_, (_, again) = resumed.rounds()
    np.testing.assert_array_equal(whole.params, again.params)
    np.testing.assert_array_equal(whole.norm.obs.m2, again.norm.obs.m2)


def test_personal_statistics_run_beside_secure_aggregation_and_dp_which_refuses_the_fleets(tmp_path, tiny_config):
    secure = ("federation.n_clients=4", "pipeline.secure_aggregation.enabled=true")
    current = runs.start(parse_config(_config(tiny_config, PERSONAL, *secure, "federation.rounds=1")), tmp_path / "s")
    ((result, state),) = current.rounds()
    assert result.stats.n_updates == 4 and state.norm.obs.count.sum() == state.env_steps
    dp = ("pipeline.clip_norm=1.0", "pipeline.dp.mode=local", "pipeline.dp.noise_multiplier=1.0")
    assert parse_config(_config(tiny_config, PERSONAL, *dp)).learner.normalize.stats == "personal"
    with pytest.raises(ConfigError, match="stats: personal keeps them on the client"):
        parse_config(_config(tiny_config, *dp))


def test_the_fleets_statistics_travel_inside_the_secure_sum_and_pool_only_its_survivors(tmp_path, tiny_config):
    # Prepare: four clients with the fleet's statistics, under secure aggregation and in the clear
    four = ("federation.n_clients=4", "federation.rounds=1")
    secure = parse_config(_config(tiny_config, *four, "pipeline.secure_aggregation.enabled=true"))
    plain = parse_config(_config(tiny_config, *four))

    # Execute: one round of each (the clients observe the same steps in both: they start alike)
    ((_, hidden),) = runs.start(secure, tmp_path / "s").rounds()
    ((_, clear),) = runs.start(plain, tmp_path / "p").rounds()

    # Assert: the secure sums stand for every client's observations pooled, as merging them in the clear does
    assert secure.stats_in_secure_sum and not secure.stats_travel
    many = (
        "federation.n_clients=70000",
        "pipeline.secure_aggregation.enabled=true",
        "pipeline.secure_aggregation.clip=0.01",
    )
    with pytest.raises(ConfigError, match="without wrapping"):
        parse_config(_config(tiny_config, *many))
    assert hidden.norm.obs.count == clear.norm.obs.count == hidden.env_steps
    for got, want in ((hidden.norm.obs, clear.norm.obs), (hidden.norm.returns, clear.norm.returns)):
        np.testing.assert_allclose(got.mean, want.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.m2, want.m2, rtol=1e-7)
    with pytest.raises(ConfigError, match="personal ones are not implemented there"):
        parse_config(_config(tiny_config, PERSONAL, "federation.clusters=2"))


def test_personal_statistics_with_adaptation_and_a_sampled_fleet_evaluate_every_client(tmp_path, tiny_config):
    # a fleet of 6 with 2 a round: some clients never train, and are evaluated with everyone's pooled statistics
    config = _config(
        tiny_config,
        PERSONAL,
        "federation.n_clients=6",
        "federation.fraction=0.34",
        "federation.rounds=2",
        "eval.adapt_steps=[0, 64]",
    )
    current = runs.start(parse_config(config), tmp_path / "r")
    *_, (result, state) = current.rounds()
    never = np.flatnonzero(state.norm.obs.count == 0)
    assert len(never) and np.all(np.isfinite(result.client_returns))
    pooled = state.norm.pooled().obs
    np.testing.assert_array_equal(state.norm.acting(never).obs.mean, np.repeat(pooled.mean[None], len(never), 0))
    summary = runs.finish(current, state)
    assert np.isfinite(summary["heldout_adapted_64"]) and np.isfinite(summary["heldout_scratch_64"])
