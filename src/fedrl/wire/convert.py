"""The records of ``fedrl.wire.records`` as ``fedrl.v1`` protobuf messages, and back.

Server and edge agent both translate through here, so the two ends cannot drift apart. Unary
records map to one message each. A record holding a vector travels as a stream: a header part,
then ``chunk`` parts with the vector's bytes (``fedrl.wire.codec``) -- for an update, either the
float32 delta or the update pipeline's encoding of it (``PAYLOAD_ENCODING``). ``*_parts`` writes
such a stream and ``read_*`` rebuilds the record from one, refusing a malformed stream with
``Rejected(INVALID_ARGUMENT)`` and one larger than the reader's limit with
``Rejected(RESOURCE_EXHAUSTED)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message

from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats
from fedrl.wire import codec
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire.records import (
    Ack,
    Model,
    Reason,
    Registration,
    Rejected,
    SecureReply,
    SecureStep,
    Submission,
    Task,
    Wait,
)

_Part = TypeVar("_Part", pb.TaskPart, pb.ModelPart, pb.UpdatePart)
_M = TypeVar("_M", bound=Message)
PAYLOAD_ENCODING = "fedrl.compress.v1"  # an update payload's bytes: fedrl.core.compress.encode's format


def parse_message(kind: type[_M], raw: bytes) -> _M:
    """One received message, or INVALID_ARGUMENT saying which message the bytes failed to be."""
    try:
        return kind.FromString(raw)
    except DecodeError:
        raise Rejected(
            Reason.INVALID_ARGUMENT, f"not a valid {kind.DESCRIPTOR.full_name} message ({len(raw)} bytes)"
        ) from None


def vector_header(vector: np.ndarray) -> pb.VectorHeader:
    """The header declaring ``vector``'s layout."""
    meta = codec.describe(vector)
    return pb.VectorHeader(dtype=meta.dtype, length=meta.length, sha256=meta.sha256)


def _meta(header: pb.VectorHeader) -> codec.VectorMeta:
    return codec.VectorMeta(header.dtype, header.length, header.sha256)


def _payload_meta(header: pb.EncodedHeader) -> codec.BytesMeta:
    """The layout of an update's payload, after checking its encoding is one this side decodes."""
    if header.encoding != PAYLOAD_ENCODING:
        raise Rejected(
            Reason.INVALID_ARGUMENT,
            f"payload: encoding {header.encoding!r} is not supported; send {PAYLOAD_ENCODING!r}",
        )
    return codec.BytesMeta(header.length, header.sha256)


def _split(parts: Iterable[_Part], what: str) -> tuple[_Part, Iterator[bytes]]:
    """A stream's header part and an iterator over the chunks that follow it."""
    parts = iter(parts)
    first = next(parts, None)
    if first is None or first.WhichOneof("part") != "header":
        raise Rejected(Reason.INVALID_ARGUMENT, f"a {what} stream must start with its header")
    return first.header, _chunks(parts, what)


def _chunks(parts: Iterator[_Part], what: str) -> Iterator[bytes]:
    for part in parts:
        if part.WhichOneof("part") != "chunk":
            raise Rejected(Reason.INVALID_ARGUMENT, f"a {what} stream has one header, then only chunks")
        yield part.chunk


def registration_message(registration: Registration) -> pb.Registration:
    """``Registration`` as sent."""
    return pb.Registration(
        client=registration.client,
        experiment_yaml=registration.experiment_yaml,
        deployed_version=registration.deployed_version,
        heartbeat_s=registration.heartbeat_s,
    )


def read_registration(message: pb.Registration) -> Registration:
    """``Registration`` as received."""
    return Registration(message.client, message.experiment_yaml, message.deployed_version, message.heartbeat_s)


def ack_message(ack: Ack) -> pb.Ack:
    """``Ack`` as sent."""
    return pb.Ack(update_id=ack.update_id, round=ack.round, accepted_at=ack.accepted_at, duplicate=ack.duplicate)


def read_ack(message: pb.Ack) -> Ack:
    """``Ack`` as received."""
    return Ack(message.update_id, message.round, message.accepted_at, message.duplicate)


def secure_request(round_: int, step: SecureStep, payload: bytes) -> pb.SecureRequest:
    """One step of a secure-aggregation round, as sent."""
    return pb.SecureRequest(round=round_, step=int(step), payload=payload)


def read_secure_request(message: pb.SecureRequest) -> tuple[int, SecureStep, bytes]:
    """The round, step and payload of a received step; INVALID_ARGUMENT for an unknown step."""
    try:
        step = SecureStep(message.step)
    except ValueError:
        raise Rejected(Reason.INVALID_ARGUMENT, f"unknown secure-aggregation step {message.step}") from None
    return message.round, step, message.payload


def secure_reply_message(reply: SecureReply) -> pb.SecureReply:
    """``SecureReply`` as sent."""
    return pb.SecureReply(
        client=reply.client,
        retry_after_s=reply.retry_after_s,
        payload=reply.payload,
        threshold=reply.threshold,
        done=reply.done,
    )


def read_secure_reply(message: pb.SecureReply) -> SecureReply:
    """``SecureReply`` as received."""
    return SecureReply(message.client, message.retry_after_s, message.payload, message.threshold, message.done)


def norm_message(norm: NormStats) -> pb.NormStats:
    """Unbatched normalisation statistics as a message."""
    message = pb.NormStats()
    for name in ("obs", "returns"):
        moments = getattr(norm, name)
        if moments is not None:
            getattr(message, name).CopyFrom(
                pb.Moments(count=float(moments.count), mean=moments.mean.tolist(), m2=moments.m2.tolist())
            )
    return message


def read_norm(message: pb.NormStats) -> NormStats:
    """The statistics a ``norm_message`` carries; a set whose means and sums of squares differ in
    length is refused (``Rejected(INVALID_ARGUMENT)``). Values are not judged here: the receiver
    knows what its experiment observes."""
    found = {}
    for name in ("obs", "returns"):
        if not message.HasField(name):
            found[name] = None
            continue
        m = getattr(message, name)
        if len(m.mean) != len(m.m2):
            raise Rejected(
                Reason.INVALID_ARGUMENT, f"norm.{name}: {len(m.mean)} means but {len(m.m2)} sums of squared deviations"
            )
        found[name] = Moments(np.array(m.count), np.array(m.mean, dtype=np.float64), np.array(m.m2, dtype=np.float64))
    return NormStats(**found)


def task_parts(task: Task | Wait) -> Iterator[pb.TaskPart]:
    """A task (with the chunks of its server control, if any) or a wait, as a stream."""
    if isinstance(task, Wait):
        wait = pb.Wait(retry_after_s=task.retry_after_s, reason=task.reason, finished=task.finished)
        yield pb.TaskPart(header=pb.TaskHeader(wait=wait))
        return
    train = pb.Train(round=task.round, base_version=task.base_version, deadline_s=task.deadline_s)
    if task.server_control is not None:
        train.server_control.CopyFrom(vector_header(task.server_control))
    if task.norm is not None:
        train.norm.CopyFrom(norm_message(task.norm))
    yield pb.TaskPart(header=pb.TaskHeader(train=train))
    if task.server_control is not None:
        yield from (pb.TaskPart(chunk=chunk) for chunk in codec.chunks(task.server_control))


def read_task(parts: Iterable[pb.TaskPart], max_bytes: int) -> Task | Wait:
    """The task or wait a stream from ``task_parts`` carries."""
    header, chunks = _split(parts, "task")
    kind = header.WhichOneof("kind")
    if kind == "wait":
        codec.assemble({}, chunks, max_bytes)  # a wait carries no bytes
        return Wait(header.wait.retry_after_s, header.wait.reason, header.wait.finished)
    if kind != "train":
        raise Rejected(Reason.INVALID_ARGUMENT, "a task header must hold a train or a wait")
    train = header.train
    metas = {"server_control": _meta(train.server_control)} if train.HasField("server_control") else {}
    control = codec.assemble(metas, chunks, max_bytes)
    norm = read_norm(train.norm) if train.HasField("norm") else None
    return Task(train.round, train.base_version, train.deadline_s, control[0] if control else None, norm)


def model_parts(model: Model) -> Iterator[pb.ModelPart]:
    """A stored version as a stream: its header, then the chunks of its parameters."""
    header = pb.ModelHeader(version=model.version, round=model.round, params=vector_header(model.params))
    if model.eval_return is not None:
        header.eval_return = model.eval_return
    if model.norm is not None:
        header.norm.CopyFrom(norm_message(model.norm))
    yield pb.ModelPart(header=header)
    yield from (pb.ModelPart(chunk=chunk) for chunk in codec.chunks(model.params))


def read_model(parts: Iterable[pb.ModelPart], max_bytes: int) -> Model:
    """The version a stream from ``model_parts`` carries."""
    header, chunks = _split(parts, "model")
    (params,) = codec.assemble({"params": _meta(header.params)}, chunks, max_bytes)
    eval_return = header.eval_return if header.HasField("eval_return") else None
    norm = read_norm(header.norm) if header.HasField("norm") else None
    return Model(header.version, params, header.round, eval_return, norm)


def update_parts(submission: Submission) -> Iterator[pb.UpdatePart]:
    """An update as a stream: its header, then the chunks of its payload (or else its delta) and
    of its control delta, if any."""
    header = pb.UpdateHeader(
        update_id=submission.update_id,
        client=submission.client,
        round=submission.round,
        base_version=submission.base_version,
        env_steps=submission.env_steps,
        metrics=submission.metrics,
        clients=submission.clients if submission.clients != 1 else 0,
    )
    if submission.payload is not None:
        meta = codec.describe_bytes(submission.payload)
        header.payload.CopyFrom(pb.EncodedHeader(encoding=PAYLOAD_ENCODING, length=meta.length, sha256=meta.sha256))
    else:
        header.delta.CopyFrom(vector_header(submission.delta))
    if submission.control_delta is not None:
        header.control_delta.CopyFrom(vector_header(submission.control_delta))
    if submission.norm is not None:
        header.norm.CopyFrom(norm_message(submission.norm))
    yield pb.UpdatePart(header=header)
    sent = submission.payload if submission.payload is not None else submission.delta
    yield from (pb.UpdatePart(chunk=chunk) for chunk in codec.chunks(sent))
    if submission.control_delta is not None:
        yield from (pb.UpdatePart(chunk=chunk) for chunk in codec.chunks(submission.control_delta))


def read_update(parts: Iterable[pb.UpdatePart], max_bytes: int, dim: int | None = None) -> Submission:
    """The submission a stream from ``update_parts`` carries, checked against its declared layout.
    With ``dim`` (the model's size) a header declaring vectors of another length is refused
    before a single chunk is read, as is one declaring more than ``max_bytes`` in all."""
    header, chunks = _split(parts, "update")
    return read_update_from(header, chunks, max_bytes, dim)


def read_update_from(
    header: pb.UpdateHeader, chunks: Iterable[bytes], max_bytes: int, dim: int | None = None
) -> Submission:
    """``read_update`` of a stream already split into its header and its chunks' bytes (a
    transport that gathers the chunks as they come passes them in one buffer)."""
    metas = _update_layout(header, dim)
    sent, *control = codec.assemble(metas, chunks, max_bytes)
    encoded = "payload" in metas
    return Submission(
        update_id=header.update_id,
        client=header.client,
        round=header.round,
        base_version=header.base_version,
        delta=None if encoded else sent,
        env_steps=header.env_steps,
        metrics=dict(header.metrics),
        control_delta=control[0] if control else None,
        digest=(header.payload if encoded else header.delta).sha256,
        payload=sent if encoded else None,
        norm=read_norm(header.norm) if header.HasField("norm") else None,
        clients=_clients(header.clients),
    )


def declared_update_bytes(first: pb.UpdatePart, max_bytes: int, dim: int | None = None) -> int:
    """The bytes of chunks that an update stream starting with ``first`` declares, refused (as
    ``read_update`` would refuse the stream) when ``first`` is not a header a reader accepts: a
    transport reading chunks as they come checks this before the first one."""
    header, _ = _split([first], "update")
    return codec.declared_bytes(_update_layout(header, dim), max_bytes)


def _update_layout(header: pb.UpdateHeader, dim: int | None) -> dict[str, codec.VectorMeta | codec.BytesMeta]:
    """The vectors an update's header declares, in stream order; with ``dim``, a vector of another
    length is refused."""
    encoded = header.HasField("payload")
    if encoded and header.HasField("delta"):
        raise Rejected(Reason.INVALID_ARGUMENT, "an update carries its delta or a payload, not both")
    metas = {"payload": _payload_meta(header.payload)} if encoded else {"delta": _meta(header.delta)}
    if header.HasField("control_delta"):
        metas["control_delta"] = _meta(header.control_delta)
    for name, meta in metas.items():
        if dim is not None and isinstance(meta, codec.VectorMeta) and meta.length != dim:
            raise Rejected(
                Reason.INVALID_ARGUMENT, f"{name}: the header declares shape ({meta.length},); the model's is ({dim},)"
            )
    return metas


def _clients(declared: int) -> int:
    """The devices an update reduces: 1 when the header leaves it out (0), refused below that."""
    if declared < 0:
        raise Rejected(Reason.INVALID_ARGUMENT, f"clients {declared} < 0: an update reduces at least one device's")
    return declared or 1
