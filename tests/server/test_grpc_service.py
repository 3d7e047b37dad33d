"""The gRPC service on a real loopback port over a real coordinator, driven through ``GrpcLink``
and through raw channels for what a well-behaved link never sends.

Every refusal is checked three ways: the status and its message, the server's state unchanged
(deployed version, open round, updates accepted per client), and the server still serving.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedrl.core.compress import decode, decompress, dense, encode
from fedrl.core.pipeline import client_message
from fedrl.edge.grpc_link import GrpcLink
from fedrl.edge.link import Unreachable
from fedrl.server.config import ServerConfig, load_server_config
from fedrl.server.coordinator import Coordinator
from fedrl.server.grpc_service import serve_grpc
from fedrl.server.log import logger
from fedrl.server.metrics import ServerMetrics
from fedrl.server.store import Store
from fedrl.wire import convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire.fedrl_pb2_grpc import FederationStub
from fedrl.wire.records import Reason, Rejected, Submission, Task
from fedrl.wire.tls import channel_credentials, server_credentials, write_dev_pki

NAMES = ("alice", "bob", "carol")
MAX_MESSAGE = 3 * 2**20  # one update (2 MiB) fits; a 4 MiB message does not


def server_config(tmp_path, *overrides: str) -> ServerConfig:
    path = tmp_path / "server.yaml"
    path.write_text(
        "experiment:\n"
        "  seed: 5\n"
        "  learner: {name: ppo, hidden: [512, 512]}\n"  # 532k parameters: a model or update is three chunks
        "  federation: {n_clients: 3, rounds: 4, local_steps: 64, stop_at_target: false}\n"
        "gate: {enabled: false}\n"
        f"limits: {{max_message_bytes: {MAX_MESSAGE}}}\n"
    )
    return load_server_config(path, list(overrides))


@dataclass(frozen=True)
class Federation:
    """A served coordinator with three enrolled clients, and the links opened to it."""

    coordinator: Coordinator
    state_dir: Path
    server: grpc.Server
    address: str
    tokens: dict[str, str]
    metrics: ServerMetrics
    links: list[GrpcLink]

    def link(self, name: str, token: str | None = None, credentials: grpc.ChannelCredentials | None = None) -> GrpcLink:
        link = GrpcLink(self.address, self.tokens[name] if token is None else token, name, credentials, timeout_s=10)
        self.links.append(link)
        return link

    def state(self) -> tuple:
        status = self.coordinator.status()
        return status.deployed_version, status.round, {c.client: c.updates_accepted for c in status.clients}

    def counter(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(f"fedrl_{name}_total", labels) or 0.0


@pytest.fixture
def start(tmp_path):
    """Start a federation (config overrides, optional TLS credentials); stopped after the test."""
    started: list[Federation] = []

    def start(*overrides: str, credentials: grpc.ServerCredentials | None = None) -> Federation:
        config, state_dir = server_config(tmp_path, *overrides), tmp_path / "state"
        store = Store(state_dir)
        tokens = {name: store.add_client(name, time.time()) for name in NAMES}
        store.close()
        metrics = ServerMetrics.create()
        coordinator = Coordinator.open(config, state_dir, metrics)
        server, port = serve_grpc(coordinator, "127.0.0.1:0", credentials, config.limits, metrics)
        started.append(Federation(coordinator, state_dir, server, f"127.0.0.1:{port}", tokens, metrics, []))
        return started[-1]

    yield start
    for federation in started:
        for link in federation.links:
            link.close()
        federation.server.stop(grace=None)
        federation.coordinator.close()


@pytest.fixture
def federation(start) -> Federation:
    return start()


@pytest.fixture
def server_errors(caplog, monkeypatch):
    """The errors the server logs during the test, whatever logging setup an earlier test left behind."""
    monkeypatch.setattr(logger, "propagate", False)  # caught once, by the handler below
    logger.addHandler(caplog.handler)
    yield lambda: [record for record in caplog.records if record.levelno >= logging.ERROR]
    logger.removeHandler(caplog.handler)


def update(federation: Federation, client: str, task: Task, fill: float = 0.01, **changes) -> Submission:
    delta = np.full(federation.coordinator.dim, fill, dtype=np.float32)
    fields = dict(
        update_id=f"{client}-r{task.round}",
        client=client,
        round=task.round,
        base_version=task.base_version,
        delta=delta,
        env_steps=64,
        metrics={"mean_return": 21.0},
    )
    return Submission(**{**fields, **changes})


def refused(reason: Reason, call, *args) -> str:
    """Make the call, expect the server to refuse it for ``reason``; returns the server's message."""
    with pytest.raises(Rejected) as refusal:
        call(*args)
    assert refusal.value.reason is reason, refusal.value.message
    return refusal.value.message


def bearer(token: str) -> tuple:
    """The call metadata that authenticates ``token``."""
    return (("authorization", f"Bearer {token}"),)


def raw_call(federation: Federation, method: str, request: bytes | list[bytes], token: str) -> grpc.RpcError:
    """Send raw bytes to a method (a list: to PushUpdate's stream); returns the error the server answered with."""
    with grpc.insecure_channel(federation.address) as channel, pytest.raises(grpc.RpcError) as failure:
        if isinstance(request, list):
            channel.stream_unary(f"/fedrl.v1.Federation/{method}")(iter(request), metadata=bearer(token), timeout=10)
        else:
            channel.unary_unary(f"/fedrl.v1.Federation/{method}")(request, metadata=bearer(token), timeout=10)
    return failure.value


def poll(call, done, seconds: float = 5.0):
    """Call every 50 ms until ``done(outcome)`` (the reply, or the ``grpc.RpcError``) or time is up; the last
    outcome."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            outcome = call()
        except grpc.RpcError as error:
            outcome = error
        if done(outcome) or time.monotonic() > deadline:
            return outcome
        time.sleep(0.05)


def close_first_round(federation: Federation) -> None:
    """All three clients send an update for round 1; closing it deploys version 1."""
    for name in NAMES:
        link = federation.link(name)
        link.push(update(federation, name, link.task()))
    federation.coordinator.tick()
    assert federation.state()[:2] == (1, 2)


def test_a_client_registers_pulls_and_uploads_over_grpc(federation):
    alice = federation.link("alice")

    registration = alice.register()
    assert (registration.client, registration.deployed_version) == ("alice", 0)
    assert "ppo" in registration.experiment_yaml and alice.heartbeat(None) == 0
    task = alice.task()
    assert (task.round, task.base_version, task.server_control) == (1, 0, None)
    model = alice.pull(task.base_version)
    assert model.params.tobytes() == federation.coordinator.model(0).params.tobytes()  # three chunks, bit for bit
    ack = alice.push(update(federation, "alice", task))

    assert (ack.update_id, ack.round, ack.duplicate) == ("alice-r1", 1, False)
    assert federation.state() == (0, 1, {"alice": 1, "bob": 0, "carol": 0})
    model_bytes = 4 * federation.coordinator.dim
    assert federation.counter("bytes_sent", transport="grpc") > model_bytes
    assert federation.counter("bytes_received", transport="grpc") > model_bytes


def test_a_compressed_update_round_trips_and_takes_a_fraction_of_the_dense_bytes_on_the_wire(start):
    # Prepare: top-1 % of each tensor, 8-bit; alice sends that, bob and carol their delta encoded dense
    federation = start(
        "experiment.pipeline.compression.sparsify=topk",
        "experiment.pipeline.compression.ratio=0.01",
        "experiment.pipeline.compression.bits=8",
    )
    coordinator, rng = federation.coordinator, np.random.default_rng(0)
    start_params = coordinator.model().params.copy()
    deltas = {name: rng.normal(0, 0.01, coordinator.dim).astype(np.float32) for name in NAMES}
    payloads = {name: encode(dense(delta)) for name, delta in deltas.items()}
    sizes = coordinator.setup.net.spec.sizes
    payloads["alice"] = client_message(coordinator.setup.config.pipeline, deltas["alice"], None, rng, sizes).payload

    # Execute
    wire = {}
    for name in NAMES:
        link, before = federation.link(name), federation.counter("bytes_received", transport="grpc")
        link.push(update(federation, name, link.task(), delta=None, payload=payloads[name]))
        wire[name] = federation.counter("bytes_received", transport="grpc") - before
    coordinator.tick()

    # Assert: the deployed model is FedAvg of what was sent, as decoded; top-1 % at 8 bits took about 1/80 of the
    # dense bytes
    sent = np.mean([decompress(decode(payloads[name])) for name in NAMES], axis=0)
    np.testing.assert_allclose(coordinator.model().params - start_params, sent, rtol=1e-5, atol=1e-8)
    assert wire["alice"] < wire["bob"] / 30 and wire["bob"] > 4 * coordinator.dim
    assert coordinator.status().rounds[0].uplink_bytes == sum(map(len, payloads.values()))


def test_a_replayed_update_gets_the_original_acknowledgement_and_changes_nothing(federation):
    alice = federation.link("alice")
    submission = update(federation, "alice", alice.task())
    ack = alice.push(submission)
    before = federation.state()

    again = alice.push(submission)

    assert again == replace(ack, duplicate=True)
    assert federation.state() == before


def test_a_wrong_or_missing_token_is_unauthenticated(federation):
    alice = federation.link("alice")
    task = alice.task()
    before = federation.state()
    intruder = federation.link("alice", token="not-a-token")

    for call, args in [
        (intruder.register, ()),
        (intruder.heartbeat, (0,)),
        (intruder.task, ()),
        (intruder.pull, (0,)),
        (intruder.push, (update(federation, "alice", task),)),
    ]:
        assert "unknown token" in refused(Reason.UNAUTHENTICATED, call, *args)
    with grpc.insecure_channel(federation.address) as channel, pytest.raises(grpc.RpcError) as anonymous:
        FederationStub(channel).Heartbeat(pb.HeartbeatRequest(), timeout=10)

    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED and "missing token" in anonymous.value.details()
    assert federation.state() == before and alice.heartbeat(0) == 0


def test_a_client_cannot_act_as_another(federation):
    alice = federation.link("alice")
    task = alice.task()
    before = federation.state()

    as_bob = refused(Reason.PERMISSION_DENIED, alice.push, update(federation, "bob", task))
    registering_as_bob = refused(
        Reason.PERMISSION_DENIED, federation.link("bob", token=federation.tokens["alice"]).register
    )

    assert "belongs to 'alice'" in as_bob and "'bob'" in as_bob and "'bob'" in registering_as_bob
    assert federation.state() == before and alice.heartbeat(0) == 0


@pytest.mark.parametrize(
    "fault, expected",
    [
        (lambda delta: np.where(np.arange(delta.size) == 7, np.nan, delta).astype(np.float32), "NaN"),
        (lambda delta: delta[:-1], "shape"),
    ],
)
def test_a_malformed_update_is_an_invalid_argument(federation, fault, expected):
    alice = federation.link("alice")
    good = update(federation, "alice", alice.task())
    before = federation.state()

    message = refused(Reason.INVALID_ARGUMENT, alice.push, replace(good, delta=fault(good.delta)))

    assert expected in message
    assert federation.state() == before
    assert alice.push(good).round == 1  # the same client, with a good update, is served


def test_an_oversized_message_or_declared_update_is_resource_exhausted(federation):
    token = federation.tokens["alice"]
    before = federation.state()
    huge_chunk = pb.UpdatePart(chunk=bytes(MAX_MESSAGE + 2**20)).SerializeToString()
    too_long = pb.EncodedHeader(encoding=convert.PAYLOAD_ENCODING, length=MAX_MESSAGE + 1, sha256="0" * 64)
    huge_header = header_part(pb.UpdateHeader(update_id="u", client="alice", payload=too_long))
    wrong_shape = pb.VectorHeader(dtype="float32", length=MAX_MESSAGE // 4, sha256="0" * 64)

    oversized = raw_call(federation, "PushUpdate", [huge_chunk], token)
    overdeclared = raw_call(federation, "PushUpdate", [huge_header], token)
    misshapen = raw_call(
        federation,
        "PushUpdate",
        [header_part(pb.UpdateHeader(update_id="v", client="alice", delta=wrong_shape))],
        token,
    )

    assert oversized.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in oversized.details()
    assert overdeclared.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "declares" in overdeclared.details()
    assert misshapen.code() == grpc.StatusCode.INVALID_ARGUMENT and "the model's is" in misshapen.details()
    assert federation.state() == before and federation.link("alice").heartbeat(0) == 0


def test_an_update_may_declare_only_what_the_models_size_allows(start):
    # Prepare: a small model (a few thousand parameters) under the default 64 MiB message limit
    federation = start("experiment.learner.hidden=[32, 32]")
    dim = federation.coordinator.dim
    payload = pb.EncodedHeader(encoding=convert.PAYLOAD_ENCODING, length=2**20, sha256="0" * 64)

    # Execute: a header declaring a 1 MiB payload, and nothing after it
    refusal = raw_call(
        federation,
        "PushUpdate",
        [header_part(pb.UpdateHeader(update_id="u", client="alice", payload=payload))],
        federation.tokens["alice"],
    )

    # Assert: refused from the header alone, at a limit of the model's size, not 64 MiB
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert federation.coordinator.max_update_bytes == 16 * dim + 65536 < 2**20
    assert f"the limit is {federation.coordinator.max_update_bytes}" in refusal.details()


def header_part(header: pb.UpdateHeader) -> bytes:
    """The first message of an update's stream."""
    return pb.UpdatePart(header=header).SerializeToString()


def test_garbage_bytes_are_an_invalid_argument(federation):
    token = federation.tokens["alice"]
    before = federation.state()

    garbage = raw_call(federation, "PushUpdate", [b"\xff" * 64], token)
    headless = raw_call(federation, "PushUpdate", [pb.UpdatePart(chunk=b"1234").SerializeToString()], token)
    garbage_beat = raw_call(federation, "Heartbeat", b"\xff" * 8, token)

    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid fedrl.v1.UpdatePart message" in garbage.details()
    assert garbage_beat.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid fedrl.v1.HeartbeatRequest message" in garbage_beat.details()
    assert headless.code() == grpc.StatusCode.INVALID_ARGUMENT and "start with its header" in headless.details()
    assert federation.counter("updates_rejected", reason="INVALID_ARGUMENT") == 2
    assert federation.state() == before and federation.link("alice").heartbeat(0) == 0


def test_an_empty_chunk_or_a_second_header_is_refused_as_it_arrives(federation):
    # Prepare: a real update's stream, then one with an empty chunk and one with a header in the middle
    token = federation.tokens["alice"]
    before = federation.state()
    task = federation.link("alice").task()
    header, *chunks = [p.SerializeToString() for p in convert.update_parts(update(federation, "alice", task))]
    empty = pb.UpdatePart(chunk=b"").SerializeToString()

    # Execute
    with_empty = raw_call(federation, "PushUpdate", [header, empty, *chunks], token)
    two_headers = raw_call(federation, "PushUpdate", [header, header, *chunks], token)

    # Assert: both refused for what they are; nothing stored
    for refused in (with_empty, two_headers):
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "one header, then only non-empty chunks" in refused.details()
    assert federation.state() == before


def test_a_stale_or_unknown_base_version_is_a_failed_precondition(federation):
    close_first_round(federation)
    alice = federation.link("alice")
    task = alice.task()
    assert (task.round, task.base_version) == (2, 1)
    before = federation.state()

    stale = refused(Reason.FAILED_PRECONDITION, alice.push, update(federation, "alice", task, base_version=0))
    unknown = refused(Reason.FAILED_PRECONDITION, alice.push, update(federation, "alice", task, base_version=99))

    assert "stale base version 0" in stale and "unknown base version 99" in unknown
    assert federation.state() == before and alice.heartbeat(1) == 1


def test_an_unknown_model_version_is_not_found(federation):
    assert "no version 7" in refused(Reason.NOT_FOUND, federation.link("alice").pull, 7)


def test_an_unexpected_server_error_is_internal_and_the_server_keeps_serving(federation, server_errors):
    close_first_round(federation)
    (federation.state_dir / "models" / "v000000.safetensors").unlink()  # a file lost from disk
    alice = federation.link("alice")

    with pytest.raises(Unreachable) as failure:  # INTERNAL may pass once the server is repaired: retry later
        alice.pull(0)

    assert "INTERNAL" in str(failure.value) and "see the server log" in str(failure.value)
    assert [(record.getMessage(), record.exc_info[0]) for record in server_errors()] == [
        ("call_failed", FileNotFoundError)
    ]
    assert alice.pull(1).version == 1


def test_a_version_the_fleet_pulls_is_serialized_once_and_a_new_one_is_served_when_deployed(federation, monkeypatch):
    # Prepare: count the versions the server serializes
    serialized = []
    real = convert.model_parts
    monkeypatch.setattr(convert, "model_parts", lambda model: serialized.append(model.version) or real(model))
    links = [federation.link(name) for name in NAMES]

    # Execute
    first = [link.pull(None) for link in links]
    close_first_round(federation)
    newer = [link.pull(None) for link in links]
    older = links[0].pull(0)

    # Assert: each version made once, and every pull bit for bit what the coordinator holds
    assert serialized == [0, 1]
    for model in [*first, *newer, older]:
        assert model.params.tobytes() == federation.coordinator.model(model.version).params.tobytes()
    assert {m.version for m in first} == {0} and {m.version for m in newer} == {1}


def test_an_update_no_buffer_has_room_for_is_refused_from_its_header_and_the_device_is_told_to_retry(start):
    # Prepare: FedBuff buffers of one, arrivals queued at most one buffer ahead, both taken
    federation = start(
        "experiment.strategy.name=fedbuff", "experiment.strategy.buffer_size=1", "rounds.max_staleness=1"
    )
    stored = {}
    for name in ("alice", "bob"):
        link = federation.link(name)
        stored[name] = update(federation, name, link.task())
        link.push(stored[name])
    carol = federation.link("carol")
    sent = update(federation, "carol", carol.task())
    chunks_read = []
    parse = convert.parse_message
    with pytest.MonkeyPatch.context() as patch:  # count the chunks the server parses
        patch.setattr(
            "fedrl.server.grpc_service.parse_message",
            lambda kind, raw: chunks_read.append(kind) or parse(kind, raw),
        )

        # Execute
        with pytest.raises(Unreachable) as failure:
            carol.push(sent)
    resent = federation.link("alice").push(stored["alice"])  # a resend needs no room

    # Assert: UNAVAILABLE, which a device's link reads as "try again later" (its update kept), after
    # the header alone; nothing stored
    assert "UNAVAILABLE" in str(failure.value) and "send again" in str(failure.value)
    assert chunks_read == [pb.UpdatePart]
    assert federation.state()[2]["carol"] == 0
    assert resent.duplicate and resent.round == 1


def test_a_client_over_its_rate_limit_is_resource_exhausted(start):
    federation = start("limits.rate_per_s=0.01", "limits.burst=3")
    alice = federation.link("alice")

    for _ in range(3):
        alice.heartbeat(None)

    assert "slow down" in refused(Reason.RESOURCE_EXHAUSTED, alice.heartbeat, None)
    assert federation.link("bob").heartbeat(None) == 0  # other clients have their own budget


def test_calls_beyond_the_concurrency_limit_are_refused_until_one_ends(start):
    federation = start("limits.max_concurrent_streams=1")
    release = threading.Event()
    parts = list(convert.update_parts(update(federation, "alice", federation.link("alice").task())))

    def slow_upload():
        yield parts[0]
        release.wait(10)
        yield from parts[1:]

    own_connection = [("grpc.use_local_subchannel_pool", 1)]  # else both channels share one HTTP/2 connection
    with (
        grpc.insecure_channel(federation.address) as uploading,
        grpc.insecure_channel(federation.address, options=own_connection) as other,
    ):
        pending = FederationStub(uploading).PushUpdate.future(
            slow_upload(), metadata=bearer(federation.tokens["alice"]), timeout=20
        )

        def beat() -> pb.HeartbeatReply:
            return FederationStub(other).Heartbeat(
                pb.HeartbeatRequest(), metadata=bearer(federation.tokens["bob"]), timeout=5
            )

        time.sleep(0.5)  # the upload takes the one slot first: a heartbeat racing it could take it instead
        busy = poll(beat, lambda outcome: isinstance(outcome, grpc.RpcError))  # once the upload holds the one slot
        release.set()
        ack = pending.result()
        after = poll(beat, lambda outcome: not isinstance(outcome, grpc.RpcError))  # once it has let go of it

    assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "Concurrent RPC limit" in busy.details()
    assert ack.round == 1 and after.deployed_version == 0


def test_an_upload_cut_off_midway_changes_nothing_and_can_be_sent_again(federation, server_errors):
    alice = federation.link("alice")
    submission = update(federation, "alice", alice.task())
    parts = list(convert.update_parts(submission))
    cut = threading.Event()
    before = federation.state()

    def cut_off_upload():
        yield parts[0]
        cut.wait(10)
        yield from parts[1:]

    with grpc.insecure_channel(federation.address) as channel:
        pending = FederationStub(channel).PushUpdate.future(
            cut_off_upload(), metadata=bearer(federation.tokens["alice"]), timeout=20
        )
        time.sleep(0.2)
        pending.cancel()
        cut.set()

    assert federation.state() == before
    assert alice.push(submission).duplicate is False
    assert server_errors() == []  # a dropped link is not a server error


def test_tls_with_client_certificates(start, tmp_path):
    pki = tmp_path / "pki"
    write_dev_pki(pki, clients=["alice"])
    credentials = server_credentials(pki / "server.pem", pki / "server.key", client_ca=pki / "ca.pem")
    federation = start(credentials=credentials)

    with_cert = channel_credentials(pki / "ca.pem", pki / "client-alice.pem", pki / "client-alice.key")
    without_cert = channel_credentials(pki / "ca.pem")

    assert federation.link("alice", credentials=with_cert).register().client == "alice"
    with pytest.raises(Unreachable):
        federation.link("alice", credentials=without_cert).heartbeat(None)
    with pytest.raises(Unreachable):
        federation.link("alice").heartbeat(None)  # plain text to a TLS server


def test_a_link_to_no_server_is_unreachable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    link = GrpcLink(f"127.0.0.1:{port}", "token", "alice", timeout_s=5)
    try:
        with pytest.raises(Unreachable, match="UNAVAILABLE"):
            link.heartbeat(None)
    finally:
        link.close()


def test_a_second_server_on_a_port_in_use_fails_instead_of_sharing_it(federation):
    port = federation.address.rpartition(":")[2]
    with pytest.raises(RuntimeError, match="Failed to bind"):
        serve_grpc(federation.coordinator, f"127.0.0.1:{port}", None, federation.coordinator.config.limits)
    assert federation.link("alice").heartbeat(None) == 0


@pytest.mark.parametrize("grow", [False, True])
def test_http2_receive_windows_grow_only_when_the_config_says_so(federation, monkeypatch, grow):
    # Prepare: catch the options the server is made with
    made = {}
    real = grpc.aio.server

    def server(*args, **kwargs):
        made.update(kwargs.get("options", []))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", server)
    limits = federation.coordinator.config.limits.model_copy(update={"grow_windows": grow})

    # Execute
    started, _ = serve_grpc(federation.coordinator, "127.0.0.1:0", None, limits)
    started.stop(0)

    # Assert: BDP probing (gRPC's window growth) is on exactly when asked for
    assert made["grpc.http2.bdp_probe"] == int(grow)
