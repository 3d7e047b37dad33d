"""The coordinator served through a real Mosquitto broker, driven through ``MqttLink`` and through
raw MQTT clients for what a well-behaved link never sends: duplicates, corrupt or missing
chunks, another device's identity, garbage.

Each refusal is checked for what the device is told and for the server's state left unchanged.
"""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest

from fedrl.core.pipeline import client_message
from fedrl.edge.link import Unreachable, Untrusted
from fedrl.edge.secure import run_secure_round
from fedrl.server.store import Store
from fedrl.wire import convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire import mqtt_pb2 as mq
from fedrl.wire.broker import BrokerTls
from fedrl.wire.mqtt_frames import split
from fedrl.wire.mqtt_seal import key_from_token, seal, unsealed
from fedrl.wire.mqtt_topics import Topics
from fedrl.wire.records import Reason, Rejected, SecureStep, Submission, Task, Wait
from fedrl.wire.tls import write_dev_pki

TOPICS = Topics("test")  # the fleet of tests/mqtt/conftest.py


def update(fleet, client: str, task: Task, fill: float = 0.01, **changes) -> Submission:
    delta = np.random.default_rng(7).uniform(-fill, fill, fleet.coordinator.dim).astype(np.float32)
    fields = dict(
        update_id=f"{client}-r{task.round}",
        client=client,
        round=task.round,
        base_version=task.base_version,
        delta=delta,
        env_steps=64,
        metrics={"mean_return": 21.0},
        digest=convert.vector_header(delta).sha256,
    )
    return Submission(**{**fields, **changes})


def sealed_for(fleet, client: str, frame: bytes, token: str | None = None) -> bytes:
    """``frame`` sealed for ``client``'s up topic as its device seals it (with ``token``: as the
    holder of that token would)."""
    return seal(key_from_token(fleet.tokens[client] if token is None else token), TOPICS.up(client), frame)


def push_frames(
    fleet, sender: str, submission: Submission, message_id: str, token: str | None = None, topic: str | None = None
) -> list[bytes]:
    """The sealed frames of a push request, as a link would send them (4 kB each: ten chunks), for
    ``topic``'s up topic (default: the sender's own)."""
    request = mq.Request(push=mq.UpdateStream(parts=convert.update_parts(submission)))
    token = fleet.tokens[sender] if token is None else token
    frames = split(message_id, request.SerializeToString(), 4096).frames
    return [sealed_for(fleet, topic or sender, frame, token) for frame in frames]


def unseal(payload: bytes) -> mq.Frame:
    return mq.Frame.FromString(mq.Sealed.FromString(payload).frame)


def replies(raw, count: int, timeout_s: float = 10.0) -> list[mq.Frame]:
    return [unseal(m.payload) for m in raw.wait_for(count, timeout_s)]


def eventually(condition, timeout_s: float = 5.0) -> bool:
    """Whether ``condition()`` holds within ``timeout_s``, polling."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def reply_of(frame: mq.Frame) -> mq.Reply:
    return mq.Reply.FromString(frame.whole)


def test_a_device_registers_pulls_and_pushes_through_the_broker(fleet):
    # Prepare
    alice = fleet.link("alice")

    # Execute
    registration = alice.register()
    task = alice.task()
    model = alice.pull(task.base_version)
    ack = alice.push(update(fleet, "alice", task))

    # Assert: the model (36 kB, over the 8 kB packet limit) arrived in chunks, bit for bit
    assert registration.client == "alice" and registration.deployed_version == 0
    assert model.params.tobytes() == fleet.coordinator.model(0).params.tobytes()
    assert ack.round == 1 and not ack.duplicate
    assert fleet.updates()["alice"] == 1
    sent = fleet.metrics.registry.get_sample_value("fedrl_bytes_sent_total", {"transport": "mqtt"})
    assert sent > model.params.nbytes


def test_an_update_encoded_by_the_pipeline_travels_through_the_broker_in_a_fraction_of_the_bytes(start_fleet):
    # Prepare: random-10 % at 4 bits
    fleet = start_fleet(
        "experiment.pipeline.compression.sparsify=randomk",
        "experiment.pipeline.compression.ratio=0.1",
        "experiment.pipeline.compression.bits=4",
    )
    alice, pipeline = fleet.link("alice"), fleet.coordinator.setup.config.pipeline
    delta = update(fleet, "alice", Task(1, 0, 1.0)).delta
    payload = client_message(pipeline, delta, None, np.random.default_rng(0)).payload
    submission = update(
        fleet, "alice", alice.task(), delta=None, payload=payload, digest=hashlib.sha256(payload).hexdigest()
    )

    # Execute
    ack = alice.push(submission)

    # Assert: stored once; the server received about 1/45 of the dense delta's bytes (frames and task request included)
    received = fleet.metrics.registry.get_sample_value("fedrl_bytes_received_total", {"transport": "mqtt"})
    assert ack.round == 1 and fleet.updates()["alice"] == 1
    assert received < delta.nbytes / 20


def test_the_deployed_version_is_announced_retained_and_heartbeats_follow_it(fleet):
    # Prepare
    links = {name: fleet.link(name) for name in fleet.tokens}
    tasks = {name: link.task() for name, link in links.items()}

    # Execute: a full round deploys version 1
    for name, link in links.items():
        link.push(update(fleet, name, tasks[name]))
    fleet.coordinator.tick()
    heard = eventually(lambda: links["alice"].heartbeat(0) == 1)
    late = fleet.raw("bob")
    late.subscribe(TOPICS.model)

    # Assert: a device subscribing afterwards still gets the retained announcement
    (message,) = late.wait_for(1)
    announcement = pb.ModelHeader.FromString(message.payload)
    assert heard and message.retain
    assert announcement.version == 1 and announcement.params.length == fleet.coordinator.dim


def test_redelivered_frames_and_a_resent_update_are_applied_once(fleet):
    # Prepare
    alice, raw = fleet.link("alice"), fleet.raw("alice")
    submission = update(fleet, "alice", alice.task())
    raw.subscribe(TOPICS.down("alice"))
    frames = push_frames(fleet, "alice", submission, "push-1")

    # Execute: every frame delivered twice (QoS 1 redelivery), then the same update as a new request
    for frame in frames + frames:
        raw.publish(TOPICS.up("alice"), frame)
    first = replies(raw, 1)
    for frame in push_frames(fleet, "alice", submission, "push-2"):
        raw.publish(TOPICS.up("alice"), frame)
    answers = replies(raw, 2)
    time.sleep(0.5)

    # Assert: one ack per request, the second marked duplicate; the update stored once
    assert [f.message_id for f in answers] == ["push-1", "push-2"] and len(raw.received) == 2
    acks = [reply_of(f).ack for f in answers]
    assert [a.duplicate for a in acks] == [False, True] and acks[0].accepted_at == acks[1].accepted_at
    assert first[0].message_id == "push-1"
    assert fleet.updates()["alice"] == 1
    assert fleet.metrics.registry.get_sample_value("fedrl_updates_accepted_total") == 1


def test_a_corrupt_chunk_is_asked_for_again_and_never_stored(fleet):
    # Prepare
    alice, raw = fleet.link("alice"), fleet.raw("alice")
    submission = update(fleet, "alice", alice.task())
    raw.subscribe(TOPICS.down("alice"))
    frames = push_frames(fleet, "alice", submission, "push-1")
    corrupt = unseal(frames[3])
    corrupt.chunk.data = corrupt.chunk.data[:-1] + bytes([corrupt.chunk.data[-1] ^ 0xFF])

    # Execute: a chunk corrupted before it was sealed (a bug on the device, not in flight)
    for frame in [*frames[:3], sealed_for(fleet, "alice", corrupt.SerializeToString()), *frames[4:]]:
        raw.publish(TOPICS.up("alice"), frame)
    (ask,) = replies(raw, 1)
    time.sleep(0.5)
    nothing_stored = fleet.updates()["alice"] == 0
    raw.publish(TOPICS.up("alice"), frames[3])
    _, answer = replies(raw, 2)

    # Assert: the server asked for chunk 2 again, stored nothing until it came, then the exact delta
    assert ask.message_id == "push-1" and list(ask.resend.indices) == [corrupt.chunk.index]
    assert nothing_stored
    assert not reply_of(answer).ack.duplicate
    store = Store(fleet.state_dir)  # a second reader of the server's state
    stored = store.read_updates(store.round_records(1), fleet.coordinator.dim)
    store.close()
    assert [u.delta.tobytes() for u in stored] == [submission.delta.tobytes()]


def test_a_missing_chunk_is_asked_for_after_a_pause(fleet):
    # Prepare
    alice, raw = fleet.link("alice"), fleet.raw("alice")
    frames = push_frames(fleet, "alice", update(fleet, "alice", alice.task()), "push-1")
    raw.subscribe(TOPICS.down("alice"))

    # Execute: chunk 4 never comes
    for frame in frames[:5] + frames[6:]:
        raw.publish(TOPICS.up("alice"), frame)
    (ask,) = replies(raw, 1, timeout_s=10)
    raw.publish(TOPICS.up("alice"), frames[5])
    _, answer = replies(raw, 2)

    # Assert
    assert list(ask.resend.indices) == [4]
    assert reply_of(answer).WhichOneof("result") == "ack" and fleet.updates()["alice"] == 1


def test_a_link_repairs_a_reply_whose_chunk_was_lost(fleet):
    # Prepare: the server's reply to a pull is dropped between broker and device, chunk 1 only
    alice = fleet.link("alice", timeout_s=15)
    connection = alice.connection
    original = connection.on_message
    dropped = []

    def lossy(message):
        frame = unseal(message.payload) if message.topic == TOPICS.down("alice") else None
        if frame is not None and frame.WhichOneof("body") == "chunk" and frame.chunk.index == 1 and not dropped:
            dropped.append(frame.chunk.index)
            return
        original(message)

    connection.on_message = lossy

    # Execute
    model = alice.pull(0)

    # Assert
    assert dropped == [1] and model.params.tobytes() == fleet.coordinator.model(0).params.tobytes()


def test_a_device_cannot_submit_or_publish_as_another(fleet):
    # Prepare
    alice, raw = fleet.link("alice"), fleet.raw("alice")
    task = alice.task()
    raw.subscribe(TOPICS.down("alice"))

    # Execute
    with pytest.raises(Rejected) as as_bob:
        alice.push(update(fleet, "bob", task))  # on its own topic, an update that claims to be bob's
    alice_login = fleet.options("alice")
    as_bobs_device = fleet.link(
        "bob", token=fleet.tokens["alice"], username=alice_login.username, password=alice_login.password
    )
    with pytest.raises(Rejected) as registering_as_bob:
        as_bobs_device.register()  # alice's login and token on bob's topic: the broker's ACL says no
    puback = raw.publish(TOPICS.up("bob"), push_frames(fleet, "alice", update(fleet, "bob", task), "x")[0])

    # Assert
    assert as_bob.value.reason is Reason.PERMISSION_DENIED and "belongs to 'alice'" in as_bob.value.message
    assert registering_as_bob.value.reason is Reason.PERMISSION_DENIED
    assert puback == "Not authorized"
    assert fleet.updates() == {"alice": 0, "bob": 0, "carol": 0}


def test_without_an_acl_a_frame_sealed_with_another_devices_token_is_refused(start_broker, start_fleet):
    # Prepare: a broker that lets every device publish anywhere
    fleet = start_fleet(broker=start_broker(acl_server_user=None))
    raw, bob = fleet.raw("alice"), fleet.link("bob")
    submission = update(fleet, "bob", bob.task())
    raw.subscribe(TOPICS.down("bob"))

    # Execute: alice publishes bob's update on bob's topic, sealed with her own token
    for frame in push_frames(fleet, "alice", submission, "spoof", topic="bob"):
        raw.publish(TOPICS.up("bob"), frame)
    (answer,) = replies(raw, 1)

    # Assert: refused (unsealed: the server cannot seal for whoever sent it); bob's own update goes in
    refusal = reply_of(answer).refusal
    assert refusal.reason == "UNAUTHENTICATED" and "'bob'" in refusal.message
    assert not mq.Sealed.FromString(raw.received[0].payload).mac
    assert fleet.updates()["bob"] == 0
    assert bob.push(submission).round == 1


def test_without_an_acl_an_eavesdropper_learns_no_token_and_cannot_replay_or_alter_a_push(start_broker, start_fleet):
    # Prepare: a login that reads every topic of the fleet
    fleet = start_fleet(broker=start_broker(acl_server_user=None))
    eavesdropper, alice = fleet.raw("bob"), fleet.link("alice")
    eavesdropper.subscribe(f"{TOPICS.root}/#")
    task = alice.task()

    # Execute: alice pushes; the eavesdropper replays what she sent, then sends it altered
    alice.push(update(fleet, "alice", task))
    time.sleep(0.5)
    sent = [m.payload for m in eavesdropper.received if m.topic == TOPICS.up("alice")]
    for payload in sent:
        eavesdropper.publish(TOPICS.up("alice"), payload)
    altered = mq.Sealed.FromString(sent[-1])
    altered.frame = altered.frame[:-1] + bytes([altered.frame[-1] ^ 1])
    altered_refused = len(fleet.coordinator.refusals._last)
    eavesdropper.publish(TOPICS.up("alice"), altered.SerializeToString())
    time.sleep(0.5)

    # Assert: no token on the wire; the replay changed nothing; the altered frame was refused
    seen = b"".join(m.payload for m in eavesdropper.received)
    assert sent and all(fleet.tokens[name].encode() not in seen for name in fleet.tokens)
    assert fleet.updates() == {"alice": 1, "bob": 0, "carol": 0}
    assert len(fleet.coordinator.refusals._last) > altered_refused


def test_a_device_drops_replies_not_sealed_with_its_key(start_broker, start_fleet):
    # Prepare: no ACL, and the server gone, so only a forger answers alice
    fleet = start_fleet(broker=start_broker(acl_server_user=None))
    fleet.service.close()
    forger, alice = fleet.raw("bob"), fleet.link("alice", timeout_s=3)
    forger.subscribe(TOPICS.up("alice"))

    def forge():
        (request,) = forger.wait_for(1)
        message_id = unseal(request.payload).message_id
        registration = mq.Reply(registration=pb.Registration(client="alice", experiment_yaml="name: forged"))
        for token in (fleet.tokens["bob"], "guessed"):  # sealed with the wrong key
            frame = split(message_id, registration.SerializeToString(), 4096).frames[0]
            forger.publish(TOPICS.down("alice"), seal(key_from_token(token), TOPICS.down("alice"), frame))
        refusal = mq.Reply(refusal=mq.Refusal(reason="PERMISSION_DENIED", message="go away"))
        forger.publish(TOPICS.down("alice"), unsealed(split(message_id, refusal.SerializeToString(), 4096).frames[0]))

    forging = threading.Thread(target=forge)
    forging.start()

    # Execute
    with pytest.raises(Unreachable) as outcome:
        alice.register()
    forging.join()

    # Assert: nothing forged was taken for an answer, and the failure says what came
    assert "no answer within 3 s" in str(outcome.value) and "3 frames" in str(outcome.value)
    assert alice.forged == 3


def test_a_wrong_token_is_unauthenticated_and_garbage_is_invalid(fleet):
    # Prepare
    raw = fleet.raw("alice")
    raw.subscribe(TOPICS.down("alice"))

    # Execute
    with pytest.raises(Unreachable) as unknown:
        fleet.link("alice", token="not-a-token").register()
    raw.publish(TOPICS.up("alice"), b"\xff\xfe not a frame")
    garbage = reply_of(replies(raw, 2)[-1]).refusal  # the first is the unknown token's refusal

    # Assert: the device is told, but not stopped (the refusal is unsealed); the service goes on
    assert "could not authenticate this device" in str(unknown.value) and "not sealed with 'alice'" in str(
        unknown.value
    )
    assert garbage.reason == "INVALID_ARGUMENT" and "fedrl.mqtt.v1.Sealed" in garbage.message
    assert fleet.link("alice").register().client == "alice"


def test_each_side_gets_what_was_published_while_it_was_away(fleet, start_fleet):
    """The server is down when the device pushes; the device is gone when the server answers.
    Both persistent sessions hold the messages, and the push still returns its ack."""
    # Prepare
    alice = fleet.link("alice", timeout_s=30, keepalive_s=1)
    submission = update(fleet, "alice", alice.task())
    fleet.service.close()
    result = {}

    # Execute
    pushing = threading.Thread(target=lambda: result.setdefault("ack", alice.push(submission)))
    pushing.start()
    time.sleep(0.5)  # the request is in the broker, queued for the server's session
    alice.connection.pause()  # the device freezes: no pings, the broker drops it
    time.sleep(2.5)
    fleet.service = type(fleet.service)(fleet.coordinator, fleet.options("fedrl-server"), fleet.metrics)
    offline = eventually(lambda: fleet.service.presence.get("alice") == "offline", timeout_s=10)
    alice.connection.resume()  # the device wakes; its session's queue is delivered
    pushing.join(20)

    # Assert
    assert offline
    assert result["ack"].update_id == submission.update_id and not result["ack"].duplicate
    assert fleet.updates()["alice"] == 1


def test_the_link_rides_out_a_broker_restart(fleet):
    # Prepare
    alice = fleet.link("alice")
    task = alice.task()

    # Execute
    fleet.broker.restart()
    ack = alice.push(update(fleet, "alice", task))  # waits for the reconnection, then goes through

    # Assert
    assert ack.round == 1 and fleet.updates()["alice"] == 1


def test_no_broker_or_a_refused_login_is_unreachable(fleet):
    wrong_password = fleet.link("alice", timeout_s=2, password="wrong")
    with pytest.raises(Unreachable, match="refused the login"):
        wrong_password.register()
    fleet.broker.stop()
    with pytest.raises(Unreachable, match="not connected"):
        fleet.link("bob", timeout_s=1).register()


def test_mqtt_3_1_1_works_with_a_configured_packet_size(start_fleet):
    fleet = start_fleet(mqtt5=False, max_payload=4096)
    alice = fleet.link("alice", mqtt5=False, max_payload=4096)
    task = alice.task()
    assert alice.pull(0).params.tobytes() == fleet.coordinator.model(0).params.tobytes()
    assert alice.push(update(fleet, "alice", task)).round == 1


def test_tls_to_the_broker_with_client_certificates_as_logins(tmp_path, start_broker, start_fleet):
    # Prepare: the broker takes a client certificate's common name as the username
    pki = tmp_path / "pki"
    write_dev_pki(pki, clients=["fedrl-server", "alice"])
    tls = BrokerTls(pki / "ca.pem", pki / "server.pem", pki / "server.key", require_certificate=True)
    broker = start_broker(users={}, tls=tls)
    certs = {
        name: dict(ca=pki / "ca.pem", cert=pki / f"client-{name}.pem", key=pki / f"client-{name}.key", username=None)
        for name in ("fedrl-server", "alice")
    }
    fleet = start_fleet(broker=broker, **certs["fedrl-server"])

    # Execute
    alice = fleet.link("alice", **certs["alice"])
    task = alice.task()
    no_certificate = fleet.link("bob", timeout_s=2, ca=pki / "ca.pem", username=None)

    # Assert
    assert alice.push(update(fleet, "alice", task)).round == 1
    with pytest.raises(Unreachable):
        no_certificate.register()


def test_a_broker_certificate_from_another_ca_is_untrusted_at_once(tmp_path, start_broker, start_fleet):
    # Prepare: the broker's certificate comes from one PKI, the device was given another's CA
    write_dev_pki(tmp_path / "pki-a", clients=["fedrl-server"])
    write_dev_pki(tmp_path / "pki-b")
    pki = tmp_path / "pki-a"
    broker = start_broker(tls=BrokerTls(pki / "ca.pem", pki / "server.pem", pki / "server.key"))
    fleet = start_fleet(broker=broker, ca=pki / "ca.pem")
    misled = fleet.link("alice", timeout_s=20, ca=tmp_path / "pki-b" / "ca.pem")

    # Execute
    started = time.monotonic()
    with pytest.raises(Untrusted) as untrusted:
        misled.register()

    # Assert: no waiting out the timeout, and a message that says what to change
    assert time.monotonic() - started < 10
    assert "certificate failed verification" in str(untrusted.value) and "CA" in str(untrusted.value)
    assert fleet.link("alice", ca=pki / "ca.pem").register().client == "alice"


def test_a_secure_round_through_the_broker_sums_exactly_with_a_device_gone_after_masking(start_fleet):
    # Prepare: three devices; bob vanishes once his masked input is in (t = 2)
    fleet = start_fleet(
        "experiment.pipeline.secure_aggregation.enabled=true",
        "experiment.pipeline.secure_aggregation.threshold=2",
        "rounds.secure_step_s=1",
        "rounds.retry_s=0.1",
    )
    config = fleet.coordinator.setup.config.pipeline.secure_aggregation
    inputs = {n: np.random.default_rng(i).uniform(-0.05, 0.05, fleet.coordinator.dim).astype(np.float32)
              for i, n in enumerate(("alice", "bob", "carol"))}  # fmt: skip
    before, outcome = fleet.coordinator.model(0).params.copy(), {}

    class Gone(Exception):
        pass

    def device(name):
        link = fleet.link(name, timeout_s=20)
        task = link.task()

        def stepped(step, _reply):
            if name == "bob" and step is SecureStep.MASK:
                raise Gone

        try:
            ask = lambda step, payload: link.secure(task.round, step, payload)  # noqa: E731
            outcome[name] = run_secure_round(ask, inputs[name], config, time.sleep, stepped).done
        except Gone:
            outcome[name] = "gone"

    # Execute
    threads = [threading.Thread(target=device, args=(n,)) for n in inputs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while fleet.coordinator.deployed_version == 0 and time.monotonic() < deadline:
        fleet.coordinator.tick()
        time.sleep(0.05)
    for thread in threads:
        thread.join(20)

    # Assert: a masked input larger than a packet travelled in chunks; the sum came out exact
    assert outcome == {"alice": True, "bob": "gone", "carol": True}
    moved = fleet.coordinator.model(1).params - before
    np.testing.assert_allclose(moved, np.mean(list(inputs.values()), axis=0), atol=1.0 / config.scale)


def test_normalisation_statistics_travel_through_the_broker_both_ways(start_fleet):
    from fedrl.core.moments import Moments
    from fedrl.core.normstats import NormStats

    # Prepare
    fleet = start_fleet("experiment.learner.normalize.obs=true")
    alice = fleet.link("alice")
    observed = NormStats(Moments.of(np.random.default_rng(3).normal(2, 3, (64, 4))), None)

    # Execute
    task = alice.task()
    model = alice.pull(task.base_version)
    alice.push(update(fleet, "alice", task, norm=observed))
    refused = update(fleet, "bob", fleet.link("bob").task(), norm=None)
    with pytest.raises(Rejected) as err:
        fleet.link("bob").push(refused)

    # Assert: the task and the model carry the statistics to start from; the update's reached the store
    assert task.norm.obs.count == 0 and model.norm.obs.count == 0
    assert "send the statistics of what you observed" in err.value.message
    store = Store(fleet.state_dir)
    try:
        (stored,) = store.read_updates(store.round_records(1), fleet.coordinator.dim)
    finally:
        store.close()
    assert stored.norm.obs.mean.tobytes() == observed.obs.mean.tobytes()


def test_a_device_told_the_run_is_finished_has_heard_of_the_last_version(start_fleet):
    # Prepare: a one-round run; every device sends its update
    fleet = start_fleet("experiment.federation.rounds=1")
    links = {name: fleet.link(name) for name in fleet.tokens}
    tasks = {name: link.task() for name, link in links.items()}
    for name, link in links.items():
        link.push(update(fleet, name, tasks[name]))

    # Execute: the round closes and a device asks at once, before the service's next housekeeping
    fleet.coordinator.tick()
    answer = links["alice"].task()

    # Assert: the answer says finished, and the version it ends with was announced before it
    assert isinstance(answer, Wait) and answer.finished
    assert links["alice"].heartbeat(1) == 1
