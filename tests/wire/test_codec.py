"""Vectors survive the trip through chunks, and every malformed stream is refused with a reason."""

import hashlib

import numpy as np
import pytest

from fedrl.wire import codec, convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire.records import Model, Reason, Rejected, Submission, Task, Wait

LIMIT = 2**24


def _vector(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _refused(reason: Reason, metas, pieces, max_bytes: int = LIMIT) -> str:
    with pytest.raises(Rejected) as refused:
        codec.assemble(metas, pieces, max_bytes)
    assert refused.value.reason is reason
    return refused.value.message


def test_a_vector_larger_than_a_chunk_arrives_bit_for_bit():
    vector = _vector(700_000)  # 2.8 MB: three chunks
    pieces = list(codec.chunks(vector))
    assert [len(p) for p in pieces] == [codec.CHUNK_BYTES, codec.CHUNK_BYTES, 4 * 700_000 - 2 * codec.CHUNK_BYTES]
    (back,) = codec.assemble({"delta": codec.describe(vector)}, pieces, LIMIT)
    assert back.dtype == np.float32 and back.tobytes() == vector.tobytes()


def test_the_wire_is_little_endian_whatever_the_input_byte_order():
    big_endian = np.array([1.0, -2.5], dtype=">f4")
    assert codec.to_bytes(big_endian) == np.array([1.0, -2.5], dtype="<f4").tobytes()
    assert codec.describe(big_endian).sha256 == hashlib.sha256(codec.to_bytes(big_endian)).hexdigest()


def test_two_vectors_back_to_back_split_at_their_declared_lengths():
    first, second = _vector(10, 1), _vector(3, 2)
    metas = {"delta": codec.describe(first), "control_delta": codec.describe(second)}
    pieces = [*codec.chunks(first, size=7), *codec.chunks(second, size=7)]
    back = codec.assemble(metas, pieces, LIMIT)
    np.testing.assert_array_equal(back[0], first)
    np.testing.assert_array_equal(back[1], second)


def test_a_declared_size_over_the_limit_is_refused_before_any_chunk_is_read():
    def pieces():
        raise AssertionError("a chunk was read")
        yield b""

    meta = codec.VectorMeta("float32", 1_000_000, "0" * 64)
    message = _refused(Reason.RESOURCE_EXHAUSTED, {"delta": meta}, pieces(), max_bytes=1_000_000)
    assert "4000000 bytes" in message and "1000000" in message


def test_an_unsupported_dtype_is_refused_by_name():
    meta = codec.VectorMeta("float64", 4, "0" * 64)
    assert "float64" in _refused(Reason.INVALID_ARGUMENT, {"delta": meta}, [])


def test_fewer_or_more_bytes_than_declared_are_refused():
    vector = _vector(8)
    meta, payload = codec.describe(vector), codec.to_bytes(vector)
    assert "received 28 bytes; the header declares 32" in _refused(
        Reason.INVALID_ARGUMENT, {"delta": meta}, [payload[:-4]]
    )
    assert "more than the 32 bytes" in _refused(Reason.INVALID_ARGUMENT, {"delta": meta}, [payload, b"\0\0\0\0"])


def test_bytes_changed_in_transit_fail_the_digest():
    vector = _vector(8)
    payload = bytearray(codec.to_bytes(vector))
    payload[5] ^= 0xFF
    message = _refused(Reason.INVALID_ARGUMENT, {"delta": codec.describe(vector)}, [bytes(payload)])
    assert message.startswith("delta: sha256")


def test_an_update_stream_round_trips_with_its_control_delta():
    submission = Submission("u-1", "robot-1", 3, 2, _vector(5), 256, {"return": 12.5}, _vector(5, 9), "")
    back = convert.read_update(convert.update_parts(submission), LIMIT)
    assert (back.update_id, back.client, back.round, back.base_version, back.env_steps) == ("u-1", "robot-1", 3, 2, 256)
    assert back.metrics == {"return": 12.5} and back.digest == codec.describe(submission.delta).sha256
    np.testing.assert_array_equal(back.delta, submission.delta)
    np.testing.assert_array_equal(back.control_delta, submission.control_delta)


def test_an_update_stream_carries_a_payload_in_place_of_the_delta_and_its_digest_covers_the_payload():
    payload = bytes(range(256)) * 5000  # over a chunk: the bytes are split like a vector's
    submission = Submission("u-2", "robot-1", 3, 2, None, 256, {}, _vector(5, 9), "", payload)

    parts = list(convert.update_parts(submission))
    back = convert.read_update(parts, LIMIT)

    assert not parts[0].header.HasField("delta") and parts[0].header.payload.encoding == convert.PAYLOAD_ENCODING
    assert back.payload == payload and back.delta is None
    assert back.digest == hashlib.sha256(payload).hexdigest() == submission.sent_digest
    np.testing.assert_array_equal(back.control_delta, submission.control_delta)


def test_a_payload_of_an_unknown_encoding_or_beside_a_delta_is_refused():
    submission = Submission("u-3", "robot-1", 3, 2, None, 256, payload=b"\x01" * 40)
    header, *chunks = convert.update_parts(submission)
    unknown = pb.UpdatePart()
    unknown.CopyFrom(header)
    unknown.header.payload.encoding = "zstd"
    both = pb.UpdatePart()
    both.CopyFrom(header)
    both.header.delta.CopyFrom(convert.vector_header(_vector(10)))

    with pytest.raises(Rejected, match="encoding 'zstd' is not supported; send 'fedrl.compress.v1'") as refused:
        convert.read_update([unknown, *chunks], LIMIT)
    assert refused.value.reason is Reason.INVALID_ARGUMENT
    with pytest.raises(Rejected, match="its delta or a payload, not both"):
        convert.read_update([both, *chunks], LIMIT)


def test_model_and_task_streams_round_trip():
    model = Model(4, _vector(300_000), 3, None)
    back = convert.read_model(convert.model_parts(model), LIMIT)
    assert (back.version, back.round, back.eval_return) == (4, 3, None)
    np.testing.assert_array_equal(back.params, model.params)
    task = convert.read_task(convert.task_parts(Task(5, 4, 30.0, _vector(6))), LIMIT)
    assert (task.round, task.base_version, task.deadline_s) == (5, 4, 30.0) and task.server_control.shape == (6,)
    assert convert.read_task(convert.task_parts(Task(5, 4, 30.0)), LIMIT).server_control is None
    assert convert.read_task(convert.task_parts(Wait(1.0, "done", True)), LIMIT) == Wait(1.0, "done", True)


def test_a_stream_must_start_with_one_header_and_continue_with_chunks_only():
    parts = list(convert.model_parts(Model(1, _vector(4), 0, 1.0)))
    with pytest.raises(Rejected, match="must start with its header"):
        convert.read_model(parts[1:], LIMIT)
    with pytest.raises(Rejected, match="one header, then only chunks"):
        convert.read_model([parts[0], parts[0], *parts[1:]], LIMIT)


def test_a_buffer_handed_over_becomes_the_vector_and_immutable_bytes_are_copied():
    # Prepare: one vector's wire bytes, as a writable buffer and as bytes
    vector = np.arange(6, dtype=np.float32)
    meta = {"delta": codec.describe(vector)}
    handed = bytearray(codec.to_bytes(vector))

    # Execute
    (viewed,) = codec.assemble(meta, [handed], 1 << 20)
    (copied,) = codec.assemble(meta, [bytes(handed)], 1 << 20)

    # Assert: the same values; the first is the buffer itself (no copy), the second is writable
    np.testing.assert_array_equal(viewed, vector)
    np.testing.assert_array_equal(copied, vector)
    assert np.shares_memory(viewed, np.frombuffer(handed, dtype=np.float32))
    assert copied.flags.writeable and copied.dtype == np.float32
