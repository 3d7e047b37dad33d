"""One enrolled client cannot stall the server by opening uploads and then sending nothing: it
gets a couple of upload slots, silent uploads are cancelled, and everyone else is served meanwhile."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from fedrl.edge.grpc_link import GrpcLink
from fedrl.server.config import load_server_config
from fedrl.server.coordinator import Coordinator
from fedrl.server.grpc_service import serve_grpc
from fedrl.server.store import Store
from fedrl.wire import convert
from fedrl.wire.records import Submission, Task

IDLE_S = 1.0


@pytest.fixture
def served(tmp_path):
    """A gRPC server with only four handler threads, so that silent uploads could take them all."""
    config = load_server_config(
        None,
        [
            "experiment.learner.hidden=[16, 16]",
            "experiment.federation.n_clients=2",
            "experiment.federation.local_steps=64",
            "gate.enabled=false",
            "limits.worker_threads=4",
            f"limits.upload_idle_s={IDLE_S}",
        ],
    )
    store = Store(tmp_path / "state")
    tokens = {name: store.add_client(name, time.time()) for name in ("alice", "mallory")}
    store.close()
    coordinator = Coordinator.open(config, tmp_path / "state")
    server, port = serve_grpc(coordinator, "127.0.0.1:0", None, config.limits)
    yield coordinator, f"127.0.0.1:{port}", tokens
    server.stop(grace=None)
    coordinator.close()


def _silent_upload(address: str, token: str, header: bytes, release: threading.Event) -> grpc.Future:
    """A PushUpdate that sends its header, then nothing until ``release`` is set."""

    def parts():
        yield header
        release.wait(30)

    channel = grpc.insecure_channel(address)
    call = channel.stream_unary("/fedrl.v1.Federation/PushUpdate")
    return call.future(parts(), metadata=(("authorization", f"Bearer {token}"),), timeout=30)


def test_silent_uploads_of_one_client_cannot_stall_the_others(served):
    # Prepare: a real header, as an honest upload would start
    coordinator, address, tokens = served
    alice = GrpcLink(address, tokens["alice"], "alice", timeout_s=5)
    task = alice.task()
    assert isinstance(task, Task)
    delta = np.full(coordinator.dim, 0.01, np.float32)
    submission = Submission("m-1", "mallory", task.round, task.base_version, delta, 64, {})
    header = next(convert.update_parts(submission)).SerializeToString()
    release = threading.Event()

    # Execute: mallory opens six uploads and goes quiet; alice carries on
    silent = [_silent_upload(address, tokens["mallory"], header, release) for _ in range(6)]
    time.sleep(0.3)
    started = time.monotonic()
    deployed = alice.heartbeat(0)
    answered_in = time.monotonic() - started
    outcomes = [f.exception(timeout=IDLE_S + 10) for f in silent]
    release.set()
    ack = alice.push(Submission("a-1", "alice", task.round, task.base_version, delta, 64, {}))

    # Assert: two slots for mallory, cancelled once idle; the rest refused at once; alice served throughout
    codes = sorted(o.code().name for o in outcomes)
    assert codes == ["CANCELLED"] * 2 + ["RESOURCE_EXHAUSTED"] * 4
    assert all("uploads open" in o.details() for o in outcomes if o.code() is grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert deployed == 0 and answered_in < 2.0
    assert ack.update_id == "a-1" and not ack.duplicate
    alice.close()
