"""Secure aggregation carried by the coordinator: clients run their half of the protocol
(``fedrl.edge.secure``) against ``Coordinator.secure_step`` in threads, as transports would carry
it; the server learns the sum -- exact within quantization -- even when a client drops out."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats
from fedrl.core.securestats import to_words
from fedrl.edge.secure import run_secure_round
from fedrl.server.coordinator import Coordinator
from fedrl.server.store import Store
from fedrl.wire.records import Reason, Rejected, SecureStep, Task, Wait

from .test_coordinator import server_config

NAMES = ("a", "b", "c", "d")
SECURE = (
    "experiment.federation.n_clients=4",
    "experiment.pipeline.secure_aggregation.enabled=true",
    "experiment.pipeline.secure_aggregation.threshold=3",
    "rounds.secure_step_s=1.0",
)


class Dropped(Exception):
    """A client that leaves the protocol after a step."""


@pytest.fixture
def coordinator(tmp_path):
    config = server_config(tmp_path, *SECURE)
    store = Store(tmp_path / "state")
    store.close()
    made = Coordinator.open(config, tmp_path / "state")
    for name in NAMES:
        made.add_client(name)
    yield made
    made.close()


def take_part(coordinator: Coordinator, name: str, x: np.ndarray, results: dict, leave_after=None, extra=None) -> None:
    """One client's task and secure round; ``leave_after``: the step after which it vanishes;
    ``extra``: the words it adds beside its update (its statistics)."""
    task = coordinator.task(name)
    assert isinstance(task, Task)

    def on_step(step, _reply):
        if step is leave_after:
            raise Dropped

    try:
        results[name] = run_secure_round(
            lambda step, payload: coordinator.secure_step(name, task.round, step, payload),
            x,
            coordinator.setup.config.pipeline.secure_aggregation,
            lambda seconds: time.sleep(min(seconds, 0.02)),
            on_step,
            extra=extra,
        )
    except Dropped:
        results[name] = "left"
    except Rejected as refusal:
        results[name] = refusal


def run_round(coordinator: Coordinator, inputs: dict[str, np.ndarray], leave: dict, extra: dict | None = None) -> dict:
    results: dict = {}
    extra = extra or {}
    threads = [
        threading.Thread(target=take_part, args=(coordinator, n, x, results, leave.get(n), extra.get(n)))
        for n, x in inputs.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while (any(t.is_alive() for t in threads) or coordinator.status().round == 1) and time.monotonic() < deadline:
        coordinator.tick()
        time.sleep(0.02)
    for thread in threads:
        thread.join(10)
    return results


def inputs_for(coordinator: Coordinator, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-0.05, 0.05, coordinator.dim).astype(np.float32) for name in NAMES}


@pytest.mark.parametrize(
    ("leave", "in_sum"),
    [({}, NAMES), ({"d": SecureStep.MASK}, NAMES), ({"d": SecureStep.SHARE}, NAMES[:3])],
    ids=["all-stay", "one-leaves-after-masking", "one-leaves-before-masking"],
)
def test_the_new_version_moves_by_the_mean_of_the_summed_inputs(coordinator, leave, in_sum):
    # Prepare
    before = coordinator.model(0).params.copy()
    inputs = inputs_for(coordinator)

    # Execute
    results = run_round(coordinator, inputs, leave)

    # Assert: one new version, moved by the survivors' mean, exact within the fixed point's step
    assert coordinator.deployed_version == 1
    expected = np.mean([inputs[n] for n in in_sum], axis=0)
    moved = coordinator.model(1).params - before
    scale = coordinator.setup.config.pipeline.secure_aggregation.scale
    np.testing.assert_allclose(moved, expected, atol=1.0 / scale)
    assert all(results[n].done for n in NAMES if n not in leave)


def test_below_the_threshold_the_round_fails_and_the_model_stays(coordinator):
    # Prepare: two of four leave after sharing; t is 3
    inputs = inputs_for(coordinator)

    # Execute
    results = run_round(coordinator, inputs, {"c": SecureStep.SHARE, "d": SecureStep.SHARE})

    # Assert: the stayers were told why; no new version; the next round is open
    refusals = [results[n] for n in ("a", "b")]
    assert all(isinstance(r, Rejected) and r.reason is Reason.FAILED_PRECONDITION for r in refusals)
    assert all("secure aggregation failed" in r.message and "sent masked inputs" in r.message for r in refusals)
    assert coordinator.deployed_version == 0 and coordinator.status().round == 2
    assert isinstance(coordinator.task("a"), Task)


def test_records_in_another_clients_name_or_of_the_wrong_length_are_refused(coordinator):
    from fedrl.core.secagg import MaskedInput, advertise_keys, encode, encode_masked

    task = coordinator.task("a")
    me = coordinator.secure_step("a", task.round, SecureStep.ADVERTISE, b"").client
    _, someone_else = advertise_keys(me + 1, lambda n: bytes(n))

    with pytest.raises(Rejected) as as_another:
        coordinator.secure_step("a", task.round, SecureStep.ADVERTISE, encode([someone_else]))
    with pytest.raises(Rejected) as garbage:
        coordinator.secure_step("a", task.round, SecureStep.ADVERTISE, b"\x01\x02")
    with pytest.raises(Rejected) as too_early:
        masked = encode_masked(MaskedInput(me, np.zeros(3, np.uint32)))
        coordinator.secure_step("a", task.round, SecureStep.MASK, masked)

    assert as_another.value.reason is Reason.PERMISSION_DENIED
    assert garbage.value.reason is Reason.INVALID_ARGUMENT
    assert too_early.value.reason is Reason.FAILED_PRECONDITION
    assert isinstance(coordinator.task("a"), (Task, Wait))


def test_part_of_what_a_client_owes_is_refused_so_no_round_is_left_unable_to_finish():
    from fedrl.core.secagg import (
        KeyAdvert,
        SealedShare,
        SecAggConfig,
        advertise_keys,
        decode,
        decode_ids,
        encode,
        encode_masked,
        mask_input,
        reveal_shares,
        share_keys,
    )
    from fedrl.server.secure_round import SecureRound

    # Prepare: three clients through ADVERTISE, driven by hand
    config, dim = SecAggConfig(enabled=True, threshold=2), 6
    secure = SecureRound(1, config, dim, 30.0, 0.1, time.monotonic)
    secure.takers, secure.expected = {0, 1, 2}, 3
    keys = {}
    for u in (0, 1, 2):
        keys[u], advert = advertise_keys(u, os.urandom)
        secure.offer(u, SecureStep.ADVERTISE, encode([advert]))
    roster = decode(KeyAdvert, secure.offer(0, SecureStep.ADVERTISE, b"").payload)
    shared = {u: share_keys(keys[u], roster, 2, os.urandom) for u in (0, 1, 2)}

    # Execute / Assert: a SHARE missing a recipient is refused; the whole one is taken
    with pytest.raises(Rejected) as short_share:
        secure.offer(0, SecureStep.SHARE, encode(shared[0][1][:1]))
    for u in (0, 1, 2):
        secure.offer(u, SecureStep.SHARE, encode(shared[u][1]))
    inbox = {u: decode(SealedShare, secure.offer(u, SecureStep.SHARE, b"").payload) for u in (0, 1, 2)}
    masked = {u: mask_input(shared[u][0], inbox[u], np.zeros(dim, np.float32), config) for u in (0, 1, 2)}
    for u in (0, 1, 2):
        secure.offer(u, SecureStep.MASK, encode_masked(masked[u][1]))
    survivors = decode_ids(secure.offer(0, SecureStep.MASK, b"").payload)
    reveals = {u: reveal_shares(masked[u][0], survivors) for u in (0, 1, 2)}

    # ... and an UNMASK missing an owner is refused; the round still completes with whole ones
    with pytest.raises(Rejected) as short_reveal:
        secure.offer(0, SecureStep.UNMASK, encode(reveals[0][:-1]))
    for u in (0, 1, 2):
        assert secure.offer(u, SecureStep.UNMASK, encode(reveals[u])).done

    assert short_share.value.reason is Reason.INVALID_ARGUMENT and "roster needs" in short_share.value.message
    assert short_reveal.value.reason is Reason.INVALID_ARGUMENT
    assert secure.total is not None and not secure.total.any()  # three zero inputs sum to zero


def test_the_fleets_statistics_in_the_secure_sum_become_the_next_versions_pooled_over_the_survivors(tmp_path):
    # Prepare: the fleet's statistics under secure aggregation; each client observed its own readings
    normalised = ("experiment.learner.normalize.obs=true", "experiment.learner.normalize.reward=true")
    coordinator = Coordinator.open(server_config(tmp_path, *SECURE, *normalised), tmp_path / "state")
    for name in NAMES:
        coordinator.add_client(name)
    rng = np.random.default_rng(7)
    observed = {
        name: NormStats(Moments.of(rng.normal(i, 1.0 + i, size=(50 * (i + 1), 4))), Moments.of(rng.normal(size=(9, 1))))
        for i, name in enumerate(NAMES)
    }
    before = coordinator.model(0).norm

    # Execute: d leaves before masking, so neither its update nor its statistics are in the sum
    run_round(
        coordinator, inputs_for(coordinator), {"d": SecureStep.SHARE}, {n: to_words(s) for n, s in observed.items()}
    )

    # Assert: the new version normalises with what a, b and c observed merged into the fleet's
    after = coordinator.model(1).norm
    want = before.merge(observed["a"].merge(observed["b"]).merge(observed["c"]))
    assert after.obs.count == want.obs.count == before.obs.count + 50 + 100 + 150
    for got, expected in ((after.obs, want.obs), (after.returns, want.returns)):
        np.testing.assert_allclose(got.mean, expected.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.m2, expected.m2, rtol=1e-9)
    coordinator.close()


def test_statistics_in_the_secure_sum_that_no_round_could_observe_are_refused_and_the_update_still_counts(tmp_path):
    # Prepare: one client claims a billion observations in its words, more than the round's steps allow
    normalised = ("experiment.learner.normalize.obs=true",)
    coordinator = Coordinator.open(server_config(tmp_path, *SECURE, *normalised), tmp_path / "state")
    for name in NAMES:
        coordinator.add_client(name)
    honest = NormStats(Moments.of(np.ones((10, 4))), None)
    claims = {name: to_words(honest) for name in NAMES}
    claims["d"] = to_words(NormStats(Moments(np.array(1e9), np.zeros(4), np.ones(4)), None))
    before = coordinator.model(0)

    # Execute
    run_round(coordinator, inputs_for(coordinator), {}, claims)

    # Assert: a new version, moved by the updates, normalising with the statistics it had
    after = coordinator.model(1)
    assert not np.array_equal(after.params, before.params)
    assert after.norm.obs.count == before.norm.obs.count
    coordinator.close()
