"""One client cannot flood the server: every call (uploads that fail to decode, model pulls) spends
its rate limit when it starts, and guessing tokens from one address is cut off before the store is
asked. Through a real gRPC server on a loopback port."""

from __future__ import annotations

import time

import grpc
import pytest

from fedrl.server.config import load_server_config
from fedrl.server.coordinator import Coordinator
from fedrl.server.grpc_service import serve_grpc
from fedrl.server.store import Store
from fedrl.wire import fedrl_pb2 as pb


@pytest.fixture
def served(tmp_path):
    config = load_server_config(
        None,
        [
            "experiment.learner.hidden=[16, 16]",
            "experiment.federation.n_clients=2",
            "gate.enabled=false",
            "limits.rate_per_s=0.5",
            "limits.burst=5",
            "limits.unknown_token_rate_per_s=0.5",
            "limits.unknown_token_burst=3",
        ],
    )
    store = Store(tmp_path / "state")
    tokens = {name: store.add_client(name, time.time()) for name in ("alice", "mallory")}
    store.close()
    coordinator = Coordinator.open(config, tmp_path / "state")
    server, port = serve_grpc(coordinator, "127.0.0.1:0", None, config.limits)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield coordinator, channel, tokens
    channel.close()
    server.stop(grace=None)
    coordinator.close()


def _garbage_push(channel: grpc.Channel, token: str) -> grpc.StatusCode:
    push = channel.stream_unary("/fedrl.v1.Federation/PushUpdate")
    try:
        push(iter([b"\xff\x00not a protobuf"]), metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _heartbeat(channel: grpc.Channel, token: str) -> grpc.StatusCode:
    beat = channel.unary_unary("/fedrl.v1.Federation/Heartbeat")
    try:
        beat(pb.HeartbeatRequest().SerializeToString(), metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_uploads_that_fail_to_decode_spend_the_rate_limit_and_others_are_served(served):
    coordinator, channel, tokens = served

    codes = [_garbage_push(channel, tokens["mallory"]) for _ in range(8)]

    # the first five are read and refused for what they are; then the bucket is empty, nothing is read
    assert codes[:5] == [grpc.StatusCode.INVALID_ARGUMENT] * 5
    assert set(codes[5:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert _heartbeat(channel, tokens["alice"]) == grpc.StatusCode.OK
    assert coordinator._store.open_round().n_updates == 0


def test_guessed_tokens_from_one_address_are_cut_off_before_the_store_is_asked(served, monkeypatch):
    coordinator, channel, tokens = served
    asked = []
    lookup = coordinator._store.client_for_token
    monkeypatch.setattr(coordinator._store, "client_for_token", lambda token: asked.append(token) or lookup(token))

    codes = [_heartbeat(channel, f"guess-{i}") for i in range(6)]

    assert codes[:3] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert set(codes[3:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert len(asked) == 3  # the store saw three guesses, not six
    assert _heartbeat(channel, tokens["alice"]) == grpc.StatusCode.OK  # a known token is not a stranger's
