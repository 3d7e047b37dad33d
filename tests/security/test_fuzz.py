"""Fuzzing what a hostile client controls: the bytes of gRPC update streams, MQTT frames, and the
submissions the coordinator validates. Every input must be answered with a ``Rejected`` (or be a
valid message) -- never another exception -- and a refused input must change nothing stored.

Hypothesis generates the inputs, derandomised so CI runs the same ones every time;
``FEDRL_FUZZ_EXAMPLES`` sets how many per target (CI: 300; `benchmarks/fuzz.py`: 25,000 each,
100,000 in all).
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrl.server.config import load_server_config
from fedrl.server.coordinator import Coordinator
from fedrl.server.store import Store
from fedrl.wire import convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire import mqtt_pb2 as mq
from fedrl.wire.codec import describe
from fedrl.wire.mqtt_frames import Inbox, split
from fedrl.wire.records import Rejected, Submission

EXAMPLES = int(os.environ.get("FEDRL_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DIM = 8
MAX_BYTES = 16 * DIM + 4096


def _valid_update_parts() -> list[bytes]:
    delta = np.linspace(-0.1, 0.1, DIM, dtype=np.float32)
    submission = Submission("u-1", "alice", 1, 0, delta, 64, digest=describe(delta).sha256)
    return [part.SerializeToString() for part in convert.update_parts(submission)]


VALID_PARTS = _valid_update_parts()


def _mutated(parts: list[bytes], data: st.DataObject) -> list[bytes]:
    """``parts`` with bytes flipped, cut or spliced in, and parts dropped or repeated."""
    out = []
    for raw in parts:
        choice = data.draw(st.integers(0, 4))
        if choice == 0:
            out.append(raw)
        elif choice == 1 and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            out.append(raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :])
        elif choice == 2:
            out.append(raw[: data.draw(st.integers(0, len(raw)))])
        elif choice == 3:
            out += [raw, raw]
    return out + data.draw(st.lists(st.binary(max_size=64), max_size=2))


def _read(raw_parts: list[bytes]) -> None:
    parts = (convert.parse_message(pb.UpdatePart, raw) for raw in raw_parts)
    convert.read_update(parts, MAX_BYTES, DIM)


@FUZZ
@given(st.lists(st.binary(max_size=256), max_size=6))
def test_the_grpc_update_decoder_refuses_random_bytes_cleanly(raw_parts):
    with contextlib.suppress(Rejected):  # a refusal is a clean answer; anything else fails the test
        _read(raw_parts)


@FUZZ
@given(st.data())
def test_the_grpc_update_decoder_refuses_mutated_updates_cleanly(data):
    with contextlib.suppress(Rejected):
        _read(_mutated(VALID_PARTS, data))


@FUZZ
@given(st.data())
def test_the_mqtt_inbox_refuses_random_and_mutated_frames_cleanly(data):
    inbox = Inbox(max_bytes=4096, clock=lambda: 0.0)
    valid = split("m-1", bytes(range(256)) * 8, max_payload=512).frames
    frames = _mutated(list(valid), data) + data.draw(st.lists(st.binary(max_size=128), max_size=3))
    for raw in frames:
        try:
            offered = inbox.offer(("alice", "m-1"), convert.parse_message(mq.Frame, raw))
        except Rejected:
            continue
        if offered.message is not None:
            assert isinstance(offered.message, bytes) and len(offered.message) <= 4096


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    config = load_server_config(
        None,
        [
            "experiment.learner.hidden=[4]",
            "experiment.federation.n_clients=2",
            "experiment.federation.local_steps=64",
            "gate.enabled=false",
            "limits.rate_per_s=1000000",
            "limits.burst=1000000",
        ],
    )
    store = Store(root / "state")
    store.add_client("alice", time.time())
    store.close()
    made = Coordinator.open(config, root / "state")
    yield made
    made.close()


def _stored(coordinator: Coordinator) -> tuple:
    store = coordinator._store
    files = sorted(p.name for p in (store.path / "updates").glob("*")) if (store.path / "updates").exists() else []
    return store.open_round(), store.latest_version(), tuple(files), coordinator.deployed_version


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
INTS = st.integers(-(2**63), 2**63 - 1)


def _vector(data: st.DataObject, dim: int) -> np.ndarray | None:
    """None, or a float32 vector of the model's length (mostly), one more or less, or any length."""
    length = data.draw(st.one_of(st.just(dim), st.sampled_from([dim - 1, dim + 1, 0]), st.integers(0, 3 * dim)))
    if data.draw(st.booleans()):
        return None
    return np.array(data.draw(st.lists(FLOATS, min_size=length, max_size=length)), np.float32)


@FUZZ
@given(st.data())
def test_the_coordinator_refuses_hostile_submissions_and_changes_nothing(coordinator, data):
    dim = coordinator.dim
    delta = _vector(data, dim)
    digest = (
        describe(delta).sha256 if delta is not None and data.draw(st.booleans()) else data.draw(st.text(max_size=70))
    )
    submission = Submission(
        update_id=data.draw(st.text(max_size=80)),
        client=data.draw(st.sampled_from(["alice", "bob", "", "alice\x00"])),
        round=data.draw(st.one_of(st.sampled_from([1, 0, 2]), INTS)),
        base_version=data.draw(st.one_of(st.sampled_from([0, 1, -1]), INTS)),
        delta=delta,
        env_steps=data.draw(st.one_of(st.sampled_from([64, 0, -1, 256]), INTS)),
        metrics=data.draw(st.dictionaries(st.text(max_size=10), FLOATS, max_size=3)),
        control_delta=_vector(data, dim) if data.draw(st.booleans()) else None,
        digest=digest,
        payload=data.draw(st.one_of(st.none(), st.binary(max_size=512))),
    )
    before = _stored(coordinator)
    try:
        coordinator.submit("alice", submission)
    except Rejected:
        assert _stored(coordinator) == before
