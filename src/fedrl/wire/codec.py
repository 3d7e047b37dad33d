"""Flat float32 vectors as bytes on the wire: a declared layout, chunks of at most 1 MiB, a digest.

A sender describes each vector (``describe``: dtype, length, sha256) in a header and then sends
its little-endian bytes in chunks (``chunks``); several vectors go back to back. Raw bytes that
stand for a vector in some encoding (an update the update pipeline encoded) travel the same way,
declared by ``describe_bytes`` (length in bytes, sha256). The receiver
hands the declared layouts and the chunks as they arrive to ``assemble``, which refuses a total
above its limit before buffering it, and afterwards checks that the byte count and every digest
match. Each refusal is a ``Rejected`` whose message says what was wrong, so a transport passes
it straight to the sender. Nothing here knows protobuf, so any transport can share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from fedrl.wire.records import Reason, Rejected

DTYPE = "float32"  # the one dtype on the wire: little-endian IEEE 754 binary32
CHUNK_BYTES = 2**20  # largest chunk, well under any sane gRPC message limit
_WIRE_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class VectorMeta:
    """The declared layout of one vector: ``dtype`` name, ``length`` in elements, ``sha256`` hex of its bytes."""

    dtype: str
    length: int
    sha256: str

    @property
    def nbytes(self) -> int:
        """Bytes the vector takes on the wire."""
        return self.length * _WIRE_DTYPE.itemsize


@dataclass(frozen=True)
class BytesMeta:
    """The declared layout of raw bytes (an encoded vector): ``length`` in bytes, ``sha256`` hex of them."""

    length: int
    sha256: str

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: the length itself."""
        return self.length


def to_bytes(vector: np.ndarray) -> bytes:
    """A flat vector's wire bytes: float32, little-endian, whatever the host's byte order."""
    return np.ascontiguousarray(vector, dtype=_WIRE_DTYPE).reshape(-1).tobytes()


def describe(vector: np.ndarray) -> VectorMeta:
    """The header a sender declares for ``vector``."""
    payload = to_bytes(vector)
    return VectorMeta(DTYPE, len(payload) // _WIRE_DTYPE.itemsize, hashlib.sha256(payload).hexdigest())


def describe_bytes(data: bytes) -> BytesMeta:
    """The header a sender declares for raw bytes."""
    return BytesMeta(len(data), hashlib.sha256(data).hexdigest())


def chunks(vector: np.ndarray | bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The wire bytes of ``vector`` (or the raw bytes given) in pieces of at most ``size`` bytes
    (none for an empty vector)."""
    payload = memoryview(vector if isinstance(vector, bytes) else to_bytes(vector))
    for start in range(0, len(payload), size):
        yield bytes(payload[start : start + size])


def declared_bytes(metas: Mapping[str, VectorMeta | BytesMeta], max_bytes: int) -> int:
    """The total the headers declare, after checking each is a layout this side can read."""
    for name, meta in metas.items():
        if isinstance(meta, VectorMeta) and meta.dtype != DTYPE:
            raise Rejected(Reason.INVALID_ARGUMENT, f"{name}: dtype {meta.dtype!r} is not supported; send {DTYPE!r}")
        if meta.length < 0:
            raise Rejected(Reason.INVALID_ARGUMENT, f"{name}: length {meta.length} is negative")
    total = sum(meta.nbytes for meta in metas.values())
    if total > max_bytes:
        raise Rejected(Reason.RESOURCE_EXHAUSTED, f"the header declares {total} bytes; the limit is {max_bytes}")
    return total


def assemble(
    metas: Mapping[str, VectorMeta | BytesMeta], pieces: Iterable[bytes], max_bytes: int
) -> tuple[np.ndarray | bytes, ...]:
    """Rebuild the vectors ``metas`` declares (in its order) from their chunks, sent back to back:
    a float32 array for a ``VectorMeta``, ``bytes`` for a ``BytesMeta``. A writable buffer given as
    the one piece is taken over: its float32 vectors are views of it, not copies.

    Refuses, as ``Rejected``: an unknown dtype, a negative length, a declared total above
    ``max_bytes`` (RESOURCE_EXHAUSTED, before anything is buffered), more or fewer bytes than
    declared, and a vector whose sha256 differs from its header's.
    """
    expected = declared_bytes(metas, max_bytes)
    received, size = [], 0
    for piece in pieces:
        size += len(piece)
        if size > expected:
            raise Rejected(Reason.INVALID_ARGUMENT, f"received more than the {expected} bytes the header declares")
        received.append(piece)
    if size != expected:
        raise Rejected(Reason.INVALID_ARGUMENT, f"received {size} bytes; the header declares {expected}")
    buffer = received[0] if len(received) == 1 else b"".join(received)  # one piece: no copy
    vectors, offset = [], 0
    for name, meta in metas.items():
        payload = memoryview(buffer)[offset : offset + meta.nbytes]
        digest = hashlib.sha256(payload).hexdigest()
        if digest != meta.sha256:
            raise Rejected(
                Reason.INVALID_ARGUMENT,
                f"{name}: sha256 {digest} of the bytes received differs from the declared {meta.sha256!r}",
            )
        raw = isinstance(meta, BytesMeta)
        vectors.append(bytes(payload) if raw else _floats(payload))
        offset += meta.nbytes
    return tuple(vectors)


def _floats(payload: memoryview) -> np.ndarray:
    """The float32 vector of wire bytes: a view of them where they are a writable buffer in the
    host's byte order (a buffer handed over, read once), else a copy (``bytes`` stay immutable)."""
    values = np.frombuffer(payload, dtype=_WIRE_DTYPE)
    if values.flags.writeable and values.dtype == np.float32:
        return values
    return values.astype(np.float32)
