"""Messages through a broker with a packet limit: one frame, or a manifest and checksummed chunks.

A sender turns a serialized ``Request`` or ``Reply`` into frames (``split``): one ``whole``
frame when it fits ``max_payload`` bytes, else a ``Manifest`` -- the message's size and sha256
and the sha256 of every chunk -- followed by the chunks. It keeps them in an ``Outbox`` for a
while, to answer a ``Resend``.

A receiver feeds every frame to its ``Inbox``, which hands a message on only when all its
chunks are in and every digest matches. A chunk whose digest is wrong is dropped and asked for
again at once; chunks that do not come are asked for again after ``resend_after_s`` without
progress (``stalled``), up to ``max_resends`` times, after which the message is abandoned (the
sender's call times out and it tries again). A frame of a message already handed on -- a QoS 1
redelivery -- is recognised and ignored. Nothing here touches a socket.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from fedrl.wire import mqtt_pb2 as mq
from fedrl.wire.records import Reason, Rejected

DIGEST_BYTES = 32
_MIN_CHUNK = 64  # a packet limit leaving less than this for data cannot carry a message usefully


@dataclass(frozen=True)
class Outgoing:
    """The frames of one message, serialized: ``[whole]``, or ``[manifest, chunk 0, chunk 1, ...]``."""

    frames: tuple[bytes, ...]

    def chunks(self, indices: Iterable[int]) -> list[bytes]:
        """The frames of the chunks a receiver asked for again (all of them, manifest first, for none)."""
        wanted = list(indices)
        if not wanted or len(self.frames) == 1:
            return list(self.frames)
        return [self.frames[i + 1] for i in wanted if 0 <= i < len(self.frames) - 1]

    @property
    def nbytes(self) -> int:
        """Bytes of all the frames."""
        return sum(map(len, self.frames))


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def split(message_id: str, message: bytes, max_payload: int) -> Outgoing:
    """``message``'s frames, each at most ``max_payload`` bytes; ``ValueError`` when even its
    manifest cannot fit (raise the broker's limit)."""
    whole = mq.Frame(message_id=message_id, whole=message).SerializeToString()
    if len(whole) <= max_payload:
        return Outgoing((whole,))
    overhead = len(mq.Frame(message_id=message_id, chunk=mq.Chunk(index=2**31 - 1, data=b"")).SerializeToString())
    chunk_bytes = max_payload - overhead - 5  # 5: the largest varint of the data's length
    if chunk_bytes < _MIN_CHUNK:
        raise ValueError(f"a packet limit of {max_payload} bytes leaves no room for data; raise it")
    view = memoryview(message)
    pieces = [view[start : start + chunk_bytes] for start in range(0, len(message), chunk_bytes)]
    manifest = mq.Manifest(
        size=len(message), sha256=_digest(message), chunk_bytes=chunk_bytes, chunk_sha256=[_digest(p) for p in pieces]
    )
    head = mq.Frame(message_id=message_id, manifest=manifest).SerializeToString()
    if len(head) > max_payload:
        raise ValueError(
            f"a {len(message)}-byte message needs a {len(head)}-byte manifest, over the "
            f"{max_payload}-byte packet limit; raise the limit"
        )
    chunks = (
        mq.Frame(message_id=message_id, chunk=mq.Chunk(index=i, data=bytes(p))).SerializeToString()
        for i, p in enumerate(pieces)
    )
    return Outgoing((head, *chunks))


class Outbox:
    """The frames of recently sent chunked messages, by key, kept ``keep_s`` seconds (and at most
    ``capacity_bytes`` of them, the newest) to answer resends."""

    def __init__(
        self, keep_s: float = 60.0, capacity_bytes: int = 64 * 2**20, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._keep_s, self._capacity, self._clock = keep_s, capacity_bytes, clock
        self._sent: OrderedDict[Hashable, tuple[float, Outgoing]] = OrderedDict()
        self._bytes = 0

    def put(self, key: Hashable, outgoing: Outgoing) -> None:
        """Remember a chunked message (a whole frame is never asked for again)."""
        if len(outgoing.frames) > 1:
            self._forget(key)
            self._sent[key] = (self._clock(), outgoing)
            self._bytes += outgoing.nbytes
            self._expire()

    def resend(self, key: Hashable, indices: Iterable[int]) -> list[bytes]:
        """The frames to publish again for a ``Resend`` of ``key``; none once forgotten."""
        self._expire()
        kept = self._sent.get(key)
        return kept[1].chunks(indices) if kept else []

    def _forget(self, key: Hashable) -> None:
        kept = self._sent.pop(key, None)
        if kept is not None:
            self._bytes -= kept[1].nbytes

    def _expire(self) -> None:
        now = self._clock()
        while self._sent:
            key, (sent_at, _) = next(iter(self._sent.items()))
            if self._bytes <= self._capacity and now - sent_at <= self._keep_s:
                return
            self._forget(key)


def _sender(key: Hashable) -> Hashable:
    return key[0] if isinstance(key, tuple) and key else None


@dataclass
class _Transfer:
    """A chunked message being reassembled (mutable, private to ``Inbox``)."""

    manifest: mq.Manifest
    chunks: dict[int, bytes] = field(default_factory=dict)
    progress_at: float = 0.0
    resends: int = 0


@dataclass(frozen=True)
class Offered:
    """What one frame did: completed a ``message``, asks for chunks to be sent again, or nothing."""

    message: bytes | None = None
    resend: tuple[int, ...] = ()
    duplicate: bool = False  # a frame of a message already handed on


def _check_manifest(manifest: mq.Manifest, max_bytes: int) -> None:
    if manifest.size > max_bytes:
        raise Rejected(
            Reason.RESOURCE_EXHAUSTED, f"the manifest declares {manifest.size} bytes; the limit is {max_bytes}"
        )
    expected = -(-manifest.size // manifest.chunk_bytes) if manifest.chunk_bytes > 0 else -1
    if (
        manifest.size < 0
        or expected != len(manifest.chunk_sha256)
        or len(manifest.sha256) != DIGEST_BYTES
        or any(len(d) != DIGEST_BYTES for d in manifest.chunk_sha256)
    ):
        raise Rejected(
            Reason.INVALID_ARGUMENT,
            f"malformed manifest: {manifest.size} bytes in chunks of "
            f"{manifest.chunk_bytes} with {len(manifest.chunk_sha256)} chunk digests",
        )


class Inbox:
    """Messages being reassembled from frames, by key (the sender and the message id: a tuple whose
    first item is the sender). Memory is bounded: each message by ``max_bytes``, each sender by
    ``max_open_per_sender`` messages at once, everyone by ``max_open`` messages."""

    def __init__(
        self,
        max_bytes: int,
        resend_after_s: float = 2.0,
        max_resends: int = 5,
        clock: Callable[[], float] = time.monotonic,
        remember: int = 4096,
        max_open_per_sender: int = 2,
        max_open: int = 256,
    ) -> None:
        self._max_bytes, self._resend_after_s, self._max_resends = max_bytes, resend_after_s, max_resends
        self._max_open_per_sender, self._max_open = max_open_per_sender, max_open
        self._clock, self._remember = clock, remember
        self._open: dict[Hashable, _Transfer] = {}
        self._done: OrderedDict[Hashable, None] = OrderedDict()

    def offer(self, key: Hashable, frame: mq.Frame) -> Offered:
        """Take one ``whole``, ``manifest`` or ``chunk`` frame; ``Rejected`` for a manifest over the
        limit or malformed, or a message whose bytes differ from its digest (the message is dropped)."""
        if key in self._done:
            return Offered(duplicate=True)
        kind = frame.WhichOneof("body")
        if kind == "whole":
            return Offered(self._finish(key, frame.whole))
        if kind == "manifest" and key not in self._open:
            _check_manifest(frame.manifest, self._max_bytes)
            self._check_room(key)
            self._open[key] = _Transfer(frame.manifest, progress_at=self._clock())
        if kind == "chunk" and key in self._open:
            return self._chunk(key, self._open[key], frame.chunk)
        return Offered()

    def _check_room(self, key: Hashable) -> None:
        """``Rejected(RESOURCE_EXHAUSTED)`` when ``key``'s sender, or everyone, has too many messages open."""
        sender = _sender(key)
        mine = sum(1 for open_key in self._open if _sender(open_key) == sender)
        if mine >= self._max_open_per_sender:
            raise Rejected(
                Reason.RESOURCE_EXHAUSTED,
                f"{mine} messages from this sender are being reassembled already; finish one first",
            )
        if len(self._open) >= self._max_open:
            raise Rejected(Reason.RESOURCE_EXHAUSTED, f"{len(self._open)} messages are being reassembled; try later")

    def _chunk(self, key: Hashable, transfer: _Transfer, chunk: mq.Chunk) -> Offered:
        digests = transfer.manifest.chunk_sha256
        if not 0 <= chunk.index < len(digests) or chunk.index in transfer.chunks:
            return Offered()
        if _digest(chunk.data) != digests[chunk.index]:
            return Offered(resend=(chunk.index,))
        transfer.chunks[chunk.index] = chunk.data
        transfer.progress_at = self._clock()
        if len(transfer.chunks) < len(digests):
            return Offered()
        del self._open[key]
        message = b"".join(transfer.chunks[i] for i in range(len(digests)))
        if len(message) != transfer.manifest.size or _digest(message) != transfer.manifest.sha256:
            raise Rejected(Reason.INVALID_ARGUMENT, "the reassembled message differs from its manifest's digest")
        return Offered(self._finish(key, message))

    def _finish(self, key: Hashable, message: bytes) -> bytes:
        self._done[key] = None
        while len(self._done) > self._remember:
            self._done.popitem(last=False)
        return message

    def stalled(self) -> list[tuple[Hashable, tuple[int, ...]]]:
        """Messages with no progress for ``resend_after_s``, with the chunks they miss; each call
        counts as one resend, and a message past ``max_resends`` is abandoned instead."""
        now, due = self._clock(), []
        for key, transfer in list(self._open.items()):
            if now - transfer.progress_at < self._resend_after_s:
                continue
            if transfer.resends >= self._max_resends:
                del self._open[key]
                continue
            transfer.resends += 1
            transfer.progress_at = now
            missing = tuple(i for i in range(len(transfer.manifest.chunk_sha256)) if i not in transfer.chunks)
            due.append((key, missing))
        return due

    def forget(self, key: Hashable) -> None:
        """Stop reassembling ``key`` (its caller gave up on it)."""
        self._open.pop(key, None)
