"""Normalisation statistics through the coordinator: sent beside updates, checked, merged by
counts into the next version, stored with it and carried by its policy card."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import client_message
from fedrl.experiment.aggregation import heldout_returns
from fedrl.experiment.config import ConfigError
from fedrl.policy import load_policy
from fedrl.server.config import load_server_config
from fedrl.server.coordinator import Coordinator
from fedrl.wire.codec import describe
from fedrl.wire.records import Reason, Rejected, Submission

NAMES = ("a", "b", "c")
OBS_DIM = 4  # CartPole
RAW = ("experiment.learner.normalize.obs=false", "experiment.learner.normalize.reward=false")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_coordinator(tmp_path, *overrides: str, gate: bool = False) -> Coordinator:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "server.yaml"
    path.write_text(
        "experiment:\n"
        "  seed: 5\n"
        "  learner: {name: ppo, hidden: [8, 8], normalize: {obs: true, reward: true}}\n"
        "  federation: {n_clients: 3, rounds: 4, local_steps: 64, stop_at_target: false}\n"
        f"gate: {{enabled: {str(gate).lower()}, heldout_clients: 2, episodes: 2}}\n"
        "rounds: {deadline_s: 30}\n"
    )
    coordinator = Coordinator.open(load_server_config(path, list(overrides)), tmp_path / "state", clock=Clock())
    for name in NAMES:
        coordinator.add_client(name)
    return coordinator


def observed(seed: int, n: int = 64) -> NormStats:
    """The statistics of ``n`` made-up observations and returns."""
    rng = np.random.default_rng(seed)
    return NormStats(Moments.of(rng.normal(seed, 1 + seed, (n, OBS_DIM))), Moments.of(rng.normal(0, 3, (n, 1))))


def with_obs(moments: Moments | None = None, **changes) -> NormStats:
    """``observed(0)`` with its observation moments replaced, or some of their fields changed."""
    base = observed(0)
    fields = {k: np.asarray(v, dtype=np.float64) for k, v in changes.items()}
    return replace(base, obs=moments if moments is not None else replace(base.obs, **fields))


def submission(coordinator: Coordinator, client: str, norm: NormStats | None, steps: int = 64) -> Submission:
    """``client``'s update for its task: a small delta, and ``norm`` beside it."""
    task = coordinator.task(client)
    delta = np.full(coordinator.dim, 0.01, dtype=np.float32)
    digest = describe(delta).sha256
    return Submission(
        f"{client}-{task.round}", client, task.round, task.base_version, delta, steps, digest=digest, norm=norm
    )


def test_a_round_merges_the_statistics_sent_beside_its_updates_into_the_next_version(tmp_path):
    # Prepare
    coordinator = open_coordinator(tmp_path)
    start = coordinator.model().norm
    assert start.obs.count == 0 and start.returns.count == 0  # nothing observed yet
    assert coordinator.task("a").norm == start  # a task carries the statistics to start from
    sent = {c: observed(i) for i, c in enumerate(NAMES)}

    # Execute: they arrive out of client order
    for c in ("c", "a", "b"):
        coordinator.submit(c, submission(coordinator, c, sent[c]))
    coordinator.tick()

    # Assert: the fleet's statistics now describe every observation sent, merged in client order
    deployed = coordinator.model()
    expected = start.merge(sent["a"]).merge(sent["b"]).merge(sent["c"])
    assert deployed.version == 1 and deployed.norm.obs.count == 3 * 64
    np.testing.assert_array_equal(deployed.norm.obs.mean, expected.obs.mean)
    np.testing.assert_array_equal(deployed.norm.returns.m2, expected.returns.m2)
    assert coordinator.task("a").norm == deployed.norm

    # the stored version and its policy card carry them through a restart
    coordinator.close()
    again = open_coordinator_again(tmp_path)
    np.testing.assert_array_equal(again.model().norm.obs.m2, expected.obs.m2)
    card = load_policy(tmp_path / "state").card
    np.testing.assert_allclose(card.obs_norm.mean, expected.obs.mean.astype(np.float32))
    np.testing.assert_allclose(card.obs_norm.var, expected.obs.var.astype(np.float32), rtol=1e-6)


def test_asynchronously_each_flushed_buffer_merges_the_statistics_sent_beside_its_updates(tmp_path):
    # Prepare: FedBuff with a buffer of two; "c" trains from version 0 and sends after version 1
    coordinator = open_coordinator(
        tmp_path, "experiment.strategy.name=fedbuff", "experiment.strategy.buffer_size=2", "rounds.max_staleness=1"
    )
    start = coordinator.model().norm
    late = submission(coordinator, "c", observed(2))
    sent = {c: observed(i) for i, c in enumerate(NAMES)}

    # Execute
    for c in ("b", "a"):
        coordinator.submit(c, submission(coordinator, c, sent[c]))
    coordinator.tick()
    first = coordinator.model()
    coordinator.submit("c", late)
    coordinator.submit("a", replace(submission(coordinator, "a", observed(3)), update_id="a-again"))
    coordinator.tick()

    # Assert: each version's statistics hold what its buffer's updates observed, stale ones too
    expected = start.merge(sent["a"]).merge(sent["b"])
    assert first.version == 1 and first.norm.obs.count == 2 * 64
    np.testing.assert_array_equal(first.norm.obs.mean, expected.obs.mean)
    second = coordinator.model()
    assert second.version == 2 and second.norm.obs.count == 4 * 64
    pooled = observed(3).merge(observed(2))  # a's and c's, pooled in client order, then merged in
    np.testing.assert_array_equal(second.norm.returns.m2, first.norm.merge(pooled).returns.m2)
    assert coordinator.task("b").norm == second.norm


def open_coordinator_again(tmp_path) -> Coordinator:
    config = load_server_config(tmp_path / "server.yaml", [])
    return Coordinator.open(config, tmp_path / "state", clock=Clock())


@pytest.mark.parametrize(
    ("norm", "message"),
    [
        (None, "send the statistics of what you observed"),
        (NormStats(observed(0).obs, None), "norm.returns is missing"),
        (
            with_obs(Moments.of(np.ones((8, 3)))),
            "norm.obs holds 3 means and 3 sums of squares; the experiment's have 4",
        ),
        (with_obs(m2=np.ones(3)), "norm.obs holds 4 means and 3 sums of squares"),
        (with_obs(count=65), "norm.obs.count 65 is not a whole number in 0..64 (the update's env steps)"),
        (with_obs(count=10.5), "norm.obs.count 10.5 is not a whole number"),
        (with_obs(count=np.nan), "norm.obs.count nan is not a whole number"),
        (with_obs(count=-1), "norm.obs.count -1 is not a whole number"),
        (replace(observed(0), returns=replace(observed(0).returns, mean=np.array([np.inf]))), "must be finite"),
        (with_obs(m2=-np.ones(OBS_DIM)), "the sums >= 0"),
        (with_obs(count=1), "1 sample(s) cannot have squared deviations"),
        (with_obs(Moments(np.array(0.0), np.ones(OBS_DIM), np.zeros(OBS_DIM))), "no samples cannot have a mean"),
        (with_obs(mean=np.full(OBS_DIM, 1e200)), "means and variances must be within 1e+15"),
        (with_obs(m2=np.full(OBS_DIM, 1e300)), "means and variances must be within 1e+15"),
    ],
)
def test_statistics_that_do_not_fit_are_refused_naming_what_is_wrong_and_nothing_is_merged(tmp_path, norm, message):
    # Prepare
    coordinator = open_coordinator(tmp_path, "rounds.min_updates=2")

    # Execute
    with pytest.raises(Rejected) as err:
        coordinator.submit("a", submission(coordinator, "a", norm))

    # Assert: refused by name; the others' round goes on and only their statistics count
    assert err.value.reason is Reason.INVALID_ARGUMENT and message in err.value.message
    for c in ("b", "c"):
        coordinator.submit(c, submission(coordinator, c, observed(1)))
    coordinator._clock.now += 31  # past the round's deadline: it closes with what came
    coordinator.tick()
    assert coordinator.model().norm.obs.count == 2 * 64


def test_statistics_are_refused_when_the_experiment_normalises_nothing(tmp_path):
    coordinator = open_coordinator(tmp_path, *RAW)
    assert coordinator.model().norm is None and coordinator.task("a").norm is None

    with pytest.raises(Rejected) as err:
        coordinator.submit("a", submission(coordinator, "a", observed(0)))

    assert "norm.obs is sent, but the experiment does not normalise it" in err.value.message


def test_the_gate_evaluates_a_candidate_with_the_statistics_it_would_deploy_with(tmp_path):
    # Prepare: statistics far from CartPole's own, so the scaling changes what the policy does
    coordinator = open_coordinator(tmp_path, gate=True)
    start = coordinator.model()
    sent = observed(3)

    # Execute
    for c in NAMES:
        coordinator.submit(c, submission(coordinator, c, sent))
    coordinator.tick()

    # Assert: the candidate (every delta 0.01) scored on the merged statistics
    candidate = start.params + np.float32(0.01)
    merged = start.norm.merge(sent).merge(sent).merge(sent)
    score = coordinator.status().rounds[0].candidate_return  # round 1; round 2 is open
    with_merged = heldout_returns(coordinator.setup, candidate, 2, 2, norm=merged).mean()
    with_start = heldout_returns(coordinator.setup, candidate, 2, 2, norm=start.norm).mean()
    assert score == pytest.approx(float(with_merged)) and score != pytest.approx(float(with_start))


def test_under_dp_personal_statistics_stay_on_the_device_and_the_versions_keep_their_start(tmp_path):
    # Prepare: personal statistics with local DP (the fleet's would be refused by the experiment itself)
    coordinator = open_coordinator(
        tmp_path,
        "experiment.learner.normalize.stats=personal",
        "experiment.pipeline.dp.mode=local",
        "experiment.pipeline.clip_norm=1.0",
        "experiment.pipeline.dp.noise_multiplier=0.1",
        "limits.max_update_norm_ratio=null",
        "rounds.min_updates=2",
    )
    payload = client_message(
        coordinator.setup.config.pipeline, np.full(coordinator.dim, 0.01, np.float32), None, np.random.default_rng(0)
    ).payload

    def sent(client, norm):
        task = coordinator.task(client)
        digest = hashlib.sha256(payload).hexdigest()
        return Submission(
            f"{client}-{task.round}",
            client,
            task.round,
            task.base_version,
            None,
            64,
            digest=digest,
            payload=payload,
            norm=norm,
        )

    # Execute / Assert: an update with statistics is refused; those without make the round
    with pytest.raises(Rejected, match="normalisation statistics travel nowhere: they stay on the device"):
        coordinator.submit("a", sent("a", observed(0)))
    for c in ("b", "c"):
        coordinator.submit(c, sent(c, None))
    coordinator._clock.now += 31
    coordinator.tick()
    deployed = coordinator.model()
    assert deployed.version == 1 and deployed.norm.obs.count == deployed.norm.returns.count == 0


def test_a_run_from_a_saved_normalising_policy_starts_from_its_statistics_and_a_mismatch_is_refused(tmp_path):
    from fedrl.experiment.card import policy_card
    from fedrl.policy.files import save_npz

    # Prepare: a policy trained with observation statistics, and one trained on raw observations
    probe = open_coordinator(tmp_path / "probe")
    setup, params = probe.setup, probe.model().params
    trained = NormStats(observed(2).obs, None)
    save_npz(tmp_path / "normalised.npz", params, policy_card(setup, params, 3, norm=trained))
    raw_setup = open_coordinator(tmp_path / "raw-probe", *RAW).setup
    save_npz(tmp_path / "raw.npz", params, policy_card(raw_setup, params, 3))
    config = load_server_config(tmp_path / "probe" / "server.yaml", [])

    # Execute
    started = Coordinator.open(config, tmp_path / "run", clock=Clock(), init_from=tmp_path / "normalised.npz")

    # Assert: the card's statistics (float32 in the card), counted as one round of env steps
    norm = started.model().norm
    assert norm.obs.count == 64 and norm.returns.count == 0
    np.testing.assert_allclose(norm.obs.mean, trained.obs.mean, rtol=1e-6)
    np.testing.assert_allclose(norm.obs.var, trained.obs.var, rtol=1e-6)
    with pytest.raises(ConfigError, match="its policy takes raw observations; this experiment trains on normalised"):
        Coordinator.open(config, tmp_path / "run2", init_from=tmp_path / "raw.npz")
    raw_config = load_server_config(tmp_path / "raw-probe" / "server.yaml", list(RAW))
    with pytest.raises(ConfigError, match="its policy takes normalised observations; this experiment trains on raw"):
        Coordinator.open(raw_config, tmp_path / "run3", init_from=tmp_path / "normalised.npz")
