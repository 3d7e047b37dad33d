"""The coordinator on a real state directory, driven in-process with a controllable clock."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from fedrl.envs import FAMILIES
from fedrl.experiment.config import ConfigError
from fedrl.server.config import ServerConfig, load_server_config, simulator_only_keys
from fedrl.server.coordinator import Coordinator
from fedrl.server.store import Store
from fedrl.wire.codec import describe
from fedrl.wire.records import Reason, Rejected, Submission, Task, Wait

NAMES = ("a", "b", "c")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def server_config(tmp_path, *overrides: str) -> ServerConfig:
    path = tmp_path / "server.yaml"
    path.write_text(
        "experiment:\n"
        "  seed: 5\n"
        "  learner: {name: ppo, hidden: [8, 8]}\n"
        "  federation: {n_clients: 3, rounds: 4, local_steps: 64, stop_at_target: false}\n"
        "gate: {enabled: false, heldout_clients: 2, episodes: 2}\n"
        "rounds: {deadline_s: 30}\n"
    )
    return load_server_config(path, list(overrides))


def open_with_clients(tmp_path, config: ServerConfig, clock: Clock) -> tuple[Coordinator, dict[str, str]]:
    coordinator = Coordinator.open(config, tmp_path / "state", clock=clock)
    tokens = {name: coordinator.add_client(name) for name in NAMES}
    return coordinator, tokens


def submission(
    coordinator: Coordinator, client: str, task: Task, value: float = 0.1, steps: int = 64, **changes
) -> Submission:
    delta = np.full(coordinator.dim, value, dtype=np.float32)
    fields = dict(
        update_id=f"{client}-{task.round}",
        client=client,
        round=task.round,
        base_version=task.base_version,
        delta=delta,
        env_steps=steps,
        digest=describe(delta).sha256,
    )
    return Submission(**{**fields, **changes})


def test_tokens_identify_clients_and_unknown_tokens_are_refused(tmp_path):
    # Prepare
    coordinator, tokens = open_with_clients(tmp_path, server_config(tmp_path), Clock())

    # Execute / Assert
    assert coordinator.authenticate(tokens["b"]) == "b"
    for token in ("", "not-a-token"):
        with pytest.raises(Rejected) as err:
            coordinator.authenticate(token)
        assert err.value.reason is Reason.UNAUTHENTICATED


def test_a_full_round_deploys_the_step_weighted_mean(tmp_path):
    # Prepare
    clock = Clock()
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), clock)
    start = coordinator.model().params.copy()
    tasks = {c: coordinator.task(c) for c in NAMES}

    # Execute
    for c, value, steps in zip(NAMES, (0.1, 0.2, 0.4), (32, 32, 64)):
        coordinator.submit(c, submission(coordinator, c, tasks[c], value, steps))
    coordinator.tick()

    # Assert: FedAvg weights 1/4, 1/4, 1/2
    deployed = coordinator.model()
    assert deployed.version == 1 and deployed.round == 1
    np.testing.assert_allclose(deployed.params - start, 0.1 / 4 + 0.2 / 4 + 0.4 / 2, rtol=1e-5)
    assert isinstance(coordinator.task("a"), Task) and coordinator.task("a").base_version == 1


def test_claiming_more_steps_than_the_budget_buys_no_more_weight(tmp_path):
    # Prepare: the budget is 64 steps; "c" claims 4x that (the most the server accepts)
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    start = coordinator.model().params.copy()
    tasks = {c: coordinator.task(c) for c in NAMES}

    # Execute
    for c, value, steps in zip(NAMES, (0.01, 0.01, 0.1), (64, 64, 256)):
        coordinator.submit(c, submission(coordinator, c, tasks[c], value, steps))
    coordinator.tick()

    # Assert: equal thirds, not the 4/6 its claim would have bought
    np.testing.assert_allclose(coordinator.model().params - start, (0.01 + 0.01 + 0.1) / 3, rtol=1e-5)


def bad_submissions(coordinator: Coordinator, task: Task) -> dict[str, tuple[Reason, str, Submission]]:
    nan = np.full(coordinator.dim, np.nan, dtype=np.float32)
    return {
        "other client": (Reason.PERMISSION_DENIED, "cannot be sent as 'b'", submission(coordinator, "b", task)),
        "NaN": (Reason.INVALID_ARGUMENT, "NaN", submission(coordinator, "a", task, delta=nan, digest="")),
        "shape": (
            Reason.INVALID_ARGUMENT,
            "shape",
            submission(coordinator, "a", task, delta=np.zeros(3, np.float32), digest=""),
        ),
        "dtype": (
            Reason.INVALID_ARGUMENT,
            "float32",
            submission(coordinator, "a", task, delta=np.zeros(coordinator.dim), digest=""),
        ),
        "digest": (Reason.INVALID_ARGUMENT, "digest", submission(coordinator, "a", task, digest="00" * 32)),
        "unknown base": (
            Reason.FAILED_PRECONDITION,
            "unknown base version 7",
            submission(coordinator, "a", task, base_version=7),
        ),
        "wrong round": (Reason.FAILED_PRECONDITION, "round 9 is not open", submission(coordinator, "a", task, round=9)),
        "no steps": (Reason.INVALID_ARGUMENT, "env_steps 0", submission(coordinator, "a", task, steps=0)),
        "too many steps": (Reason.INVALID_ARGUMENT, "env_steps", submission(coordinator, "a", task, steps=10**9)),
    }


@pytest.mark.parametrize(
    "case",
    ["other client", "NaN", "shape", "dtype", "digest", "unknown base", "wrong round", "no steps", "too many steps"],
)
def test_each_bad_update_is_refused_with_its_reason_and_changes_nothing(tmp_path, case):
    # Prepare
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    task = coordinator.task("a")
    reason, words, bad = bad_submissions(coordinator, task)[case]

    # Execute
    with pytest.raises(Rejected) as err:
        coordinator.submit("a", bad)

    # Assert: the refusal says what was wrong; the round has no update and "a" may still send its own
    assert err.value.reason is reason and words in err.value.message
    assert coordinator.status().rounds[-1].n_updates == 0
    assert coordinator.submit("a", submission(coordinator, "a", task)).round == 1


def test_a_resubmission_returns_the_original_ack_and_a_reused_id_is_refused(tmp_path):
    # Prepare
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    task = coordinator.task("a")
    first = coordinator.submit("a", submission(coordinator, "a", task))

    # Execute
    again = coordinator.submit("a", submission(coordinator, "a", task))
    with pytest.raises(Rejected) as reused:
        coordinator.submit("a", submission(coordinator, "a", task, value=0.3))
    with pytest.raises(Rejected) as second:
        coordinator.submit("a", submission(coordinator, "a", task, update_id="a-other"))

    # Assert
    assert again.duplicate and again.accepted_at == first.accepted_at and again.round == first.round
    assert reused.value.reason is Reason.ALREADY_EXISTS and "different update" in reused.value.message
    assert second.value.reason is Reason.ALREADY_EXISTS and "already sent" in second.value.message
    assert coordinator.status().rounds[-1].n_updates == 1


def test_a_stale_update_is_refused_after_the_round_moved_on(tmp_path):
    # Prepare
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    old = {c: coordinator.task(c) for c in NAMES}
    for c in NAMES:
        coordinator.submit(c, submission(coordinator, c, old[c]))
    coordinator.tick()
    coordinator.task("a")

    # Execute
    with pytest.raises(Rejected) as err:
        coordinator.submit("a", submission(coordinator, "a", old["a"], update_id="late", round=2))

    # Assert
    assert err.value.reason is Reason.FAILED_PRECONDITION and "stale base version 0" in err.value.message


def test_a_client_whose_update_is_refused_gives_its_place_to_one_that_asks(tmp_path):
    # Prepare: two places a round; "a" and "b" take them, "c" is told to wait
    config = server_config(tmp_path, "experiment.federation.fraction=0.67")
    coordinator, _ = open_with_clients(tmp_path, config, Clock())
    tasks = {c: coordinator.task(c) for c in ("a", "b")}
    waiting = coordinator.task("c")

    # Execute: "a" sends garbage (a NaN); "c" asks again; the round does not wait for "a"
    with pytest.raises(Rejected):
        coordinator.submit("a", submission(coordinator, "a", tasks["a"], value=float("nan")))
    stand_in = coordinator.task("c")
    coordinator.submit("b", submission(coordinator, "b", tasks["b"]))
    coordinator.submit("c", submission(coordinator, "c", stand_in))
    again = coordinator.task("a")
    coordinator.tick()

    # Assert: "c" took the place, "a" got no second chance this round, the round closed at once
    assert isinstance(waiting, Wait) and isinstance(stand_in, Task) and isinstance(again, Wait)
    assert coordinator.deployed_version == 1 and coordinator.status().rounds[-2].n_updates == 2


def test_the_deadline_closes_a_round_with_the_minimum_of_updates(tmp_path):
    # Prepare
    clock = Clock()
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path, "rounds.min_updates=2"), clock)
    for c in ("a", "b"):
        coordinator.submit(c, submission(coordinator, c, coordinator.task(c)))

    # Execute / Assert: before the deadline the round waits for "c"; after it, two are enough
    coordinator.tick()
    assert coordinator.deployed_version == 0
    clock.now += 31
    coordinator.tick()
    assert coordinator.deployed_version == 1 and coordinator.status().rounds[-2].n_updates == 2


def test_a_restart_keeps_every_acknowledged_update_and_gives_the_same_model(tmp_path):
    # Prepare: an unbroken run, and one whose coordinator is closed (as after kill -9) mid-round
    results = []
    for name, restart in (("once", False), ("twice", True)):
        folder = tmp_path / name
        folder.mkdir()
        clock = Clock()
        coordinator, _ = open_with_clients(folder, server_config(folder), clock)
        tasks = {c: coordinator.task(c) for c in NAMES}
        for c in ("a", "b"):
            coordinator.submit(c, submission(coordinator, c, tasks[c], value=0.5))

        # Execute
        if restart:
            coordinator.close()
            coordinator = Coordinator.open(server_config(folder), folder / "state", clock=clock)
            again = coordinator.submit("a", submission(coordinator, "a", tasks["a"], value=0.5))
            assert again.duplicate
        coordinator.submit("c", submission(coordinator, "c", tasks["c"], value=0.5))
        coordinator.tick()
        results.append(coordinator.model())

    # Assert
    assert results[0].version == results[1].version == 1
    np.testing.assert_array_equal(results[0].params, results[1].params)


def test_the_gate_keeps_the_deployed_model_when_the_candidate_is_worse(tmp_path):
    # Prepare: every client pushes the actor's output bias to "always left", worse on CartPole than
    # the near-uniform initial policy (sampled actions: a greedy near-uniform policy is one-sided too)
    config = server_config(  # the norm bound off: what the gate does with a bad candidate is tested
        tmp_path, "gate.enabled=true", "experiment.eval.greedy=false", "limits.max_update_norm_ratio=null"
    )
    coordinator, _ = open_with_clients(tmp_path, config, Clock())
    spec = coordinator.setup.net.spec
    bias = spec.offsets[spec.names.index("actor.2.bias")]
    delta = np.zeros(coordinator.dim, dtype=np.float32)
    delta[bias : bias + 2] = (50.0, -50.0)
    before = coordinator.model()

    # Execute
    for c in NAMES:
        coordinator.submit(
            c, submission(coordinator, c, coordinator.task(c), delta=delta, digest=describe(delta).sha256)
        )
    coordinator.tick()

    # Assert: round 1 closed without a new version; its candidate is kept for inspection
    closed = coordinator.status().rounds[-2]
    assert coordinator.deployed_version == 0 and closed.promoted is False
    assert closed.candidate_return < before.eval_return
    assert (tmp_path / "state" / "rejected" / "r000001.safetensors").exists()
    assert coordinator.task("a").base_version == 0


def test_asynchronous_mode_accepts_slightly_stale_updates_and_closes_every_buffer(tmp_path):
    # Prepare
    config = server_config(
        tmp_path,
        "experiment.strategy.name=fedbuff",
        "experiment.strategy.buffer_size=2",
        "rounds.max_staleness=1",
    )
    coordinator, _ = open_with_clients(tmp_path, config, Clock())
    old = coordinator.task("c")
    for c in ("a", "b"):
        coordinator.submit(c, submission(coordinator, c, coordinator.task(c)))
    coordinator.tick()

    # Execute: "c" sends from version 0 while version 1 is deployed (staleness 1: accepted)
    ack = coordinator.submit("c", submission(coordinator, "c", old))
    coordinator.submit("a", submission(coordinator, "a", coordinator.task("a"), update_id="a-2"))
    coordinator.tick()

    # Assert
    assert ack.round == 2 and coordinator.deployed_version == 2


def test_fedasync_applies_updates_that_arrive_together_one_version_each(tmp_path):
    # Prepare: three updates arrive before the server's clock closes a round
    config = server_config(tmp_path, "experiment.strategy.name=fedasync", "rounds.max_staleness=3")
    coordinator, _ = open_with_clients(tmp_path, config, Clock())
    tasks = {c: coordinator.task(c) for c in NAMES}

    # Execute
    acks = [coordinator.submit(c, submission(coordinator, c, tasks[c])) for c in NAMES]
    for _ in NAMES:
        coordinator.tick()

    # Assert: one update per buffer, each its own version
    assert [ack.round for ack in acks] == [1, 2, 3]
    assert coordinator.deployed_version == 3
    assert [r.n_updates for r in coordinator.status().rounds[:3]] == [1, 1, 1]


def fedbuff_of_two(tmp_path, *overrides: str) -> tuple[ServerConfig, Coordinator]:
    config = server_config(
        tmp_path, "experiment.strategy.name=fedbuff", "experiment.strategy.buffer_size=2", *overrides
    )
    coordinator, _ = open_with_clients(tmp_path, config, Clock())
    return config, coordinator


def test_fedbuff_queues_arrivals_in_full_buffers_and_asks_to_send_again_past_them(tmp_path):
    # Prepare: buffers of two, fresh arrivals queued at most one buffer ahead
    config, coordinator = fedbuff_of_two(tmp_path, "rounds.max_staleness=1")
    task = coordinator.task("a")
    sent = [submission(coordinator, c, task, update_id=f"{c}-{i}") for i in range(2) for c in ("a", "b")]

    # Execute: a restart between the arrivals and the closes
    acks = [coordinator.submit(s.client, s) for s in sent]
    coordinator.close()
    reopened = Coordinator.open(config, tmp_path / "state", clock=Clock())
    with pytest.raises(Rejected) as err:
        reopened.submit("c", submission(reopened, "c", task))
    reopened.wake.clear()
    reopened.tick()
    woken = reopened.wake.is_set()  # the round it opened was already full
    reopened.tick()

    # Assert: no buffer holds more than two; the refusal asks to send again, which devices do
    assert [ack.round for ack in acks] == [1, 1, 2, 2]
    assert err.value.reason is Reason.UNAVAILABLE and "send again" in err.value.message
    assert woken and reopened.deployed_version == 2
    assert [r.n_updates for r in reopened.status().rounds[:2]] == [2, 2]


def test_a_stale_update_waits_fewer_buffers_and_updates_being_written_hold_their_places(tmp_path):
    # Prepare: version 1 deployed; the open buffer holds one update, another is being written
    _, coordinator = fedbuff_of_two(tmp_path, "rounds.max_staleness=2")
    old = coordinator.task("c")
    for c in ("a", "b"):
        coordinator.submit(c, submission(coordinator, c, coordinator.task(c)))
    coordinator.tick()
    coordinator.submit("a", submission(coordinator, "a", coordinator.task("a"), update_id="a-fresh"))
    writing = coordinator.accept("b", submission(coordinator, "b", coordinator.task("b"), update_id="b-fresh"))

    # Execute: updates from version 0 (one version stale) may wait one buffer ahead, fresh ones two
    queued = [coordinator.submit(c, submission(coordinator, c, old, update_id=f"{c}-old")) for c in ("c", "a")]
    with pytest.raises(Rejected) as err:
        coordinator.submit("b", submission(coordinator, "b", old, update_id="b-old"))
    fresh = coordinator.submit("b", submission(coordinator, "b", coordinator.task("b"), update_id="b-fresher"))

    # Assert: the place of the update being written was not given away
    assert [ack.round for ack in queued] == [3, 3] and err.value.reason is Reason.UNAVAILABLE
    assert fresh.round == 4
    coordinator.write(writing)
    assert coordinator.record(writing)[0].round == 2


def test_once_the_run_is_over_an_asynchronous_update_is_refused_not_queued(tmp_path):
    # Prepare: a run of 4 rounds whose last buffer is full
    _, coordinator = fedbuff_of_two(tmp_path, "rounds.max_staleness=8")
    first = coordinator.task("c")
    for r in range(4):
        for c in ("a", "b"):
            coordinator.submit(c, submission(coordinator, c, coordinator.task(c), update_id=f"{c}-{r}"))
        if r < 3:
            coordinator.tick()

    # Execute
    with pytest.raises(Rejected) as full:
        coordinator.submit("c", submission(coordinator, "c", coordinator.task("c")))
    coordinator.tick()
    with pytest.raises(Rejected) as over:
        coordinator.submit("c", submission(coordinator, "c", first, update_id="c-late"))

    # Assert: nothing queued past round 4, and nothing acknowledged that no version would take in
    assert full.value.reason is Reason.UNAVAILABLE
    assert coordinator.finished and over.value.reason is Reason.FAILED_PRECONDITION
    assert coordinator.deployed_version == 4


def test_a_store_whose_asynchronous_rounds_held_more_than_a_buffer_is_spread_on_open(tmp_path):
    # Prepare: a FedAsync store written before buffers were capped: three updates in round 1
    config = server_config(tmp_path, "experiment.strategy.name=fedasync", "rounds.max_staleness=3")
    coordinator, _ = open_with_clients(tmp_path, config, Clock())
    for c in NAMES:
        coordinator.submit(c, submission(coordinator, c, coordinator.task(c)))
    coordinator.close()
    store = Store(tmp_path / "state")
    store.db.execute("UPDATE updates SET round = 1")
    store.close()

    # Execute
    reopened = Coordinator.open(config, tmp_path / "state", clock=Clock())
    for _ in NAMES:
        reopened.tick()

    # Assert: one update a version, in arrival order
    assert reopened.deployed_version == 3
    assert [r.n_updates for r in reopened.status().rounds[:3]] == [1, 1, 1]


def test_a_fedbuff_store_spread_on_open_keeps_its_overflow_in_the_runs_last_buffer(tmp_path):
    # Prepare: a run of 2 rounds whose store holds six acknowledged updates in round 1, buffers of 2
    config, coordinator = fedbuff_of_two(tmp_path, "experiment.federation.rounds=2", "rounds.max_staleness=8")
    task = coordinator.task("a")
    sent = [submission(coordinator, c, task, update_id=f"{c}-{i}") for i in range(2) for c in NAMES]
    for s in sent[:4]:  # all the capped server takes; an older one took the other two as well
        coordinator.submit(s.client, s)
    coordinator.close()
    store = Store(tmp_path / "state")
    for s in sent[4:]:
        store.write_update_file(s)
        store.record_update(s, 1, s.digest, 1000.0)
    store.db.execute("UPDATE updates SET round = 1")
    store.close()

    # Execute
    reopened = Coordinator.open(config, tmp_path / "state", clock=Clock())
    reopened.tick()
    reopened.tick()

    # Assert: every acknowledged update is applied, none in a round the run never reaches
    assert reopened.finished and reopened.deployed_version == 2
    assert [r.n_updates for r in reopened.status().rounds[:2]] == [2, 4]


def test_a_client_over_its_rate_is_refused(tmp_path):
    # Prepare
    coordinator, _ = open_with_clients(
        tmp_path, server_config(tmp_path, "limits.rate_per_s=1", "limits.burst=2"), Clock()
    )
    coordinator.heartbeat("a", None)
    coordinator.heartbeat("a", None)

    # Execute
    with pytest.raises(Rejected) as err:
        coordinator.heartbeat("a", None)

    # Assert: only "a" is limited
    assert err.value.reason is Reason.RESOURCE_EXHAUSTED
    assert coordinator.heartbeat("b", None) == 0


def test_a_state_dir_refuses_a_different_experiment(tmp_path):
    # Prepare
    Coordinator.open(server_config(tmp_path), tmp_path / "state").close()

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"different experiment \(seed: 5 there, 6 here\)"):
        Coordinator.open(server_config(tmp_path, "experiment.seed=6"), tmp_path / "state")


def test_a_state_dir_whose_learner_took_other_family_defaults_is_refused_saying_so(tmp_path, monkeypatch):
    # Prepare: a MountainCar server started before the family's defaults changed
    config = server_config(tmp_path, "experiment.env.family=mountaincar", "experiment.env.heterogeneity=0.5")
    Coordinator.open(config, tmp_path / "state").close()
    family = FAMILIES["mountaincar"]
    changed = {"ppo": {**family.learner_defaults["ppo"], "ent_coef": 0.5}}
    monkeypatch.setitem(FAMILIES, "mountaincar", dataclasses.replace(family, learner_defaults=changed))

    # Execute / Assert: the same server config now means another experiment
    again = server_config(tmp_path, "experiment.env.family=mountaincar", "experiment.env.heterogeneity=0.5")
    with pytest.raises(ConfigError, match=r"learner.ent_coef: 0.01 there, 0.5 here\).*env family's defaults"):
        Coordinator.open(again, tmp_path / "state")


def test_a_finished_run_tells_clients_to_stop(tmp_path):
    # Prepare
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path, "experiment.federation.rounds=1"), Clock())

    # Execute
    for c in NAMES:
        coordinator.submit(c, submission(coordinator, c, coordinator.task(c)))
    coordinator.tick()

    # Assert
    reply = coordinator.task("a")
    assert isinstance(reply, Wait) and reply.finished


def test_a_finished_run_knows_which_clients_in_touch_have_not_heard_so(tmp_path):
    # Prepare: a one-round run all three took part in
    clock = Clock()
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path, "experiment.federation.rounds=1"), clock)
    for c in NAMES:
        coordinator.submit(c, submission(coordinator, c, coordinator.task(c)))
    coordinator.tick()

    # Execute / Assert: told one by one; a client silent for longer than asked is not waited for
    assert coordinator.unaware_of_finish(within_s=5) == ["a", "b", "c"]
    coordinator.task("a")
    assert coordinator.unaware_of_finish(within_s=5) == ["b", "c"]
    clock.now += 3
    coordinator.heartbeat("b", 1)
    clock.now += 3
    assert coordinator.unaware_of_finish(within_s=5) == ["b"]
    coordinator.task("b")
    assert coordinator.unaware_of_finish(within_s=5) == []


def test_a_resent_update_is_acknowledged_only_once_its_record_is_on_disk(tmp_path):
    # Prepare: the first fsync of the records fails (a full disk, say) after the record was committed
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    group = coordinator._store._records
    syncs, real_sync = [], group._sync

    def failing_once() -> None:
        syncs.append(group._written)
        if len(syncs) == 1:
            raise OSError("no space left on device")
        real_sync()

    group._sync = failing_once
    sent = submission(coordinator, "a", coordinator.task("a"))
    with pytest.raises(OSError):
        coordinator.submit("a", sent)

    # Execute: the device sends the same update again
    ack = coordinator.submit("a", sent)

    # Assert: the resend is the same update, acknowledged after a sync that covered its record
    assert ack.duplicate and ack.update_id == sent.update_id
    assert len(syncs) == 2 and syncs[1] >= 1


def test_the_store_keeps_only_token_hashes(tmp_path):
    # Prepare
    store = Store(tmp_path / "state")

    # Execute
    token = store.add_client("sensor-1", 0.0)

    # Assert
    assert token.encode() not in (tmp_path / "state" / "server.db").read_bytes()
    assert store.client_for_token(token)[0] == "sensor-1"
    with pytest.raises(ValueError, match="already exists"):
        store.add_client("sensor-1", 0.0)


def test_applied_updates_leave_no_files_behind_and_orphans_are_swept(tmp_path):
    # Prepare: a file written for an update whose record never committed (a crash in between)
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    tasks = {c: coordinator.task(c) for c in NAMES}
    orphan = submission(coordinator, "a", tasks["a"], update_id="never-recorded")
    Store(tmp_path / "state").write_update_file(orphan)  # as the server's store does before it commits
    updates = tmp_path / "state" / "updates"

    # Execute
    for c in NAMES:
        coordinator.submit(c, submission(coordinator, c, tasks[c]))
    coordinator.tick()
    coordinator.close()
    Coordinator.open(server_config(tmp_path), tmp_path / "state").close()

    # Assert
    assert list(updates.iterdir()) == []


@pytest.mark.parametrize("path", ["examples/deploy/server.yaml", "examples/mosquitto/server.yaml"])
def test_server_examples_are_valid(path):
    from pathlib import Path

    config = load_server_config(Path(__file__).parents[2] / path)
    assert config.experiment.federation.n_clients == 5


def test_old_version_files_are_pruned_when_asked_and_say_so(tmp_path):
    # Prepare
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path, "store.keep_versions=2"), Clock())

    # Execute: three rounds make versions 1, 2, 3
    for _ in range(3):
        tasks = {c: coordinator.task(c) for c in NAMES}
        for c in NAMES:
            coordinator.submit(c, submission(coordinator, c, tasks[c]))
        coordinator.tick()

    # Assert: versions 2 and 3 are kept; an older one is refused with the reason
    models = tmp_path / "state" / "models"
    assert sorted(p.name for p in models.iterdir()) == ["v000002.safetensors", "v000003.safetensors"]
    assert coordinator.model(2).version == 2
    with pytest.raises(Rejected) as err:
        coordinator.model(1)
    assert err.value.reason is Reason.NOT_FOUND and "pruned" in err.value.message


def test_an_update_far_larger_than_the_model_is_refused_by_default(tmp_path):
    # Prepare: a finite update of 3e38 everywhere, as an attacker sent to throw every round away
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    task = coordinator.task("a")
    model_norm = float(np.linalg.norm(coordinator.model().params.astype(np.float64)))

    # Execute
    with pytest.raises(Rejected) as huge:
        coordinator.submit("a", submission(coordinator, "a", task, value=3e38))
    honest = coordinator.submit("a", submission(coordinator, "a", task, value=0.5 * model_norm / coordinator.dim**0.5))

    # Assert: refused by the bound relative to the deployed model (2x its norm by default)
    assert huge.value.reason is Reason.INVALID_ARGUMENT
    assert "2 x the deployed model's norm" in huge.value.message and "max_update_norm_ratio" in huge.value.message
    assert honest.round == task.round


def test_the_server_names_the_experiment_keys_only_the_simulator_uses(tmp_path):
    config = server_config(
        tmp_path, "experiment.fleet.dropout=0.2", "experiment.attack.fraction=0.1", "experiment.backend.name=ray"
    )
    assert simulator_only_keys(config.experiment) == ["fleet.dropout", "attack.fraction", "backend.name"]
    assert simulator_only_keys(server_config(tmp_path).experiment) == []


def test_a_new_run_starts_from_a_pretrained_policy_and_refuses_one_of_another_network(tmp_path):
    from fedrl.experiment.card import policy_card
    from fedrl.policy.files import save_npz

    # Prepare: a "pre-trained" policy of this experiment's network, and one of another network
    config = server_config(tmp_path)
    setup = Coordinator.open(config, tmp_path / "probe").setup
    pretrained = setup.initial_params() + np.float32(0.5)
    save_npz(tmp_path / "pretrained.npz", pretrained, policy_card(setup, pretrained, 7))
    other = server_config(tmp_path, "experiment.learner.hidden=[16]")
    other_setup = Coordinator.open(other, tmp_path / "probe-other").setup
    wide = other_setup.initial_params()
    save_npz(tmp_path / "other.npz", wide, policy_card(other_setup, wide, 1))

    # Execute
    coordinator = Coordinator.open(config, tmp_path / "state", init_from=tmp_path / "pretrained.npz")

    # Assert: version 0 is the pre-trained policy; a mismatch or an existing run is refused by name
    assert coordinator.deployed_version == 0
    np.testing.assert_array_equal(coordinator.model(0).params, pretrained)
    with pytest.raises(
        ConfigError,
        match=r"actor-critic 4-16-2 \(discrete\) network; this experiment trains a "
        r"actor-critic 4-8-8-2 \(discrete\) one",
    ):
        Coordinator.open(config, tmp_path / "fresh", init_from=tmp_path / "other.npz")
    with pytest.raises(ConfigError, match="--init-from starts a new run, but .* holds one already"):
        Coordinator.open(config, tmp_path / "state", init_from=tmp_path / "pretrained.npz")
    forged = dataclasses.replace(policy_card(setup, pretrained, 7), network="builtins:print")
    save_npz(tmp_path / "forged.npz", pretrained, forged)  # compared on the card: never imported
    with pytest.raises(
        ConfigError, match="its policy runs your network 'builtins:print'; this experiment trains fedrl's MLP"
    ):
        Coordinator.open(config, tmp_path / "forged", init_from=tmp_path / "forged.npz")


def test_each_closed_round_is_told_to_the_callbacks_and_a_failing_one_does_not_stop_the_server(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedrl.experiment.callbacks import TensorBoardCallback

    class Broken:
        def on_round(self, report):
            raise RuntimeError("the logging service is down")

        def close(self):
            raise RuntimeError("still down")

    class Watcher:
        def __init__(self):
            self.evaluated, self.deployed = [], []

        def on_round(self, report):
            pass

        def on_evaluation(self, report):
            self.evaluated.append((report.round, report.scalars["return/candidate"]))

        def on_deploy(self, deployed):
            self.deployed.append(deployed)

        def close(self):
            pass

    clock = Clock()
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path, "gate.enabled=true"), clock)
    watcher = Watcher()
    coordinator.callbacks += [
        Broken(),
        TensorBoardCallback(tmp_path / "tb", purge_step=coordinator.open_round),
        watcher,
    ]
    for _ in range(2):
        tasks = {c: coordinator.task(c) for c in NAMES}
        for c in NAMES:
            coordinator.submit(c, submission(coordinator, c, tasks[c]))
        coordinator.tick()
    coordinator.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()

    assert coordinator.model().version == 2  # the broken callback stopped nothing
    assert [(e.step, e.value) for e in events.Scalars("deploy/version")] == [(1, 1.0), (2, 2.0)]
    assert [e.value for e in events.Scalars("round/updates")] == [3.0, 3.0]
    assert [r for r, _ in watcher.evaluated] == [1, 2]  # the gate scored each candidate
    assert [d.version for d in watcher.deployed] == [1, 2] and watcher.deployed[-1].card.version == 2
    np.testing.assert_array_equal(watcher.deployed[-1].params, coordinator.model(2).params)


# --- fast rounds: an arrival that completes the round wakes the loop; clients waiting for the next round are held
def _tasks(coordinator) -> dict[str, Task]:
    return {name: coordinator.task(name) for name in NAMES}


def _in_thread(function, *args) -> tuple[threading.Thread, dict]:
    """``function(*args)`` in a thread; its answer and seconds taken land in the dict."""
    out: dict = {}

    def body():
        started = time.monotonic()
        out["answer"] = function(*args)
        out["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=body)
    thread.start()
    return thread, out


def test_the_last_update_of_a_round_wakes_the_loop(tmp_path):
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    tasks = _tasks(coordinator)
    for name in NAMES[:2]:
        coordinator.submit(name, submission(coordinator, name, tasks[name]))
        assert not coordinator.wake.is_set()
    coordinator.submit("c", submission(coordinator, "c", tasks["c"]))
    assert coordinator.wake.is_set()


def test_a_client_waiting_for_the_next_round_gets_its_task_as_soon_as_the_round_opens(tmp_path):
    # Prepare: a's update is in; it asks for work and is held
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    tasks = _tasks(coordinator)
    coordinator.submit("a", submission(coordinator, "a", tasks["a"]))
    thread, out = _in_thread(coordinator.task, "a", 5.0)
    time.sleep(0.2)
    assert "answer" not in out  # still held
    # Act: the others send theirs, and the loop closes the round
    for name in ("b", "c"):
        coordinator.submit(name, submission(coordinator, name, tasks[name]))
    coordinator.tick()
    thread.join(timeout=5)
    # Assert: a got round 2's task at once, long before its 5 s
    assert isinstance(out["answer"], Task) and out["answer"].round == 2
    assert out["seconds"] < 2.0


@pytest.mark.parametrize(("wait_s", "retry_after_s"), [(0.3, 0.7), (1.5, 0.0)])
def test_a_client_held_the_whole_time_asks_again_after_what_is_left_of_retry_s(tmp_path, wait_s, retry_after_s):
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    tasks = _tasks(coordinator)
    coordinator.submit("a", submission(coordinator, "a", tasks["a"]))
    started = time.monotonic()
    answer = coordinator.task("a", wait_s)
    assert isinstance(answer, Wait) and answer.retry_after_s == pytest.approx(retry_after_s)
    assert time.monotonic() - started >= wait_s


def test_a_client_is_held_once_and_a_place_given_up_wakes_the_held(tmp_path):
    # Prepare: one place a round; a has it, b is held waiting
    coordinator, _ = open_with_clients(
        tmp_path, server_config(tmp_path, "experiment.federation.fraction=0.34"), Clock()
    )
    assert isinstance(coordinator.task("a"), Task)
    thread, held = _in_thread(coordinator.task, "b", 5.0)
    time.sleep(0.2)
    started = time.monotonic()
    assert isinstance(coordinator.task("b", 5.0), Wait)  # a second call of b's is not held too
    assert time.monotonic() - started < 1.0
    # Act: a's upload is refused and it gives its place up
    coordinator.forfeit("a", "a malformed update")
    thread.join(timeout=5)
    # Assert: b was woken and took the place
    assert isinstance(held["answer"], Task) and held["seconds"] < 2.0


def test_long_polls_must_leave_handler_threads_for_uploads(tmp_path):
    with pytest.raises(ConfigError, match="limits.long_polls.*must be below worker_threads \\(8\\)"):
        server_config(tmp_path, "limits.worker_threads=8", "limits.long_polls=8")
    assert server_config(tmp_path, "limits.worker_threads=4").limits.held_at_most == 2


def test_beyond_long_polls_clients_are_told_to_ask_again_later(tmp_path):
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path, "limits.long_polls=1"), Clock())
    tasks = _tasks(coordinator)
    for name in ("a", "b"):
        coordinator.submit(name, submission(coordinator, name, tasks[name]))
    thread, held = _in_thread(coordinator.task, "a", 5.0)
    time.sleep(0.2)
    started = time.monotonic()
    answer = coordinator.task("b", 5.0)  # the one slot is a's
    assert isinstance(answer, Wait) and answer.retry_after_s == coordinator.config.rounds.retry_s
    assert time.monotonic() - started < 1.0
    coordinator.release()  # the server stops: a is answered at once
    thread.join(timeout=5)
    assert isinstance(held["answer"], Wait) and held["seconds"] < 2.0


@pytest.mark.parametrize("wait_s", [0.0, 5.0])
def test_a_client_with_work_is_never_held(tmp_path, wait_s):
    coordinator, _ = open_with_clients(tmp_path, server_config(tmp_path), Clock())
    started = time.monotonic()
    assert isinstance(coordinator.task("a", wait_s), Task)
    assert time.monotonic() - started < 1.0
