"""Authenticated MQTT frames: a per-device key derived from the device's token; the token itself
never crosses the broker.

Every frame on a device's ``up`` or ``down`` topic travels as a ``Sealed``: the serialized
``Frame`` and its HMAC-SHA256 under the device's *frame key*, computed over the topic, a zero
byte and the frame's bytes. Binding the topic means a sealed frame is valid on one device's
topic in one direction only. The frame key is ``HMAC-SHA256(SHA-256(token), PURPOSE)``: the
device derives it from its token, the server from the token hash it already stores, so
enrolments made before frames were sealed keep working and no new secret is kept anywhere.

What this buys without a broker ACL: a subscriber to ``fedrl/#`` learns no token and cannot
make a frame any device or the server accepts, and a frame changed in flight is refused. A
replayed frame is harmless: its message id is recognised, and every call is idempotent (a
replayed push is answered with the original acknowledgement). The cost: a copy of the server's
store holds every device's frame key, so it lets its holder forge MQTT frames (not gRPC calls)
until the tokens are rotated; keep the state directory private (it is 0700).
"""

from __future__ import annotations

import hashlib
import hmac

from fedrl.wire import mqtt_pb2 as mq
from fedrl.wire.convert import parse_message
from fedrl.wire.records import Reason, Rejected

PURPOSE = b"fedrl mqtt frame key v1"
MAC_BYTES = 32
SEAL_OVERHEAD = 48  # a Sealed's bytes beyond its frame's: two tags, two lengths and the MAC


def key_from_token_hash(token_hash: bytes) -> bytes:
    """The frame key of the device whose token's SHA-256 digest is ``token_hash`` (the server's side)."""
    return hmac.new(token_hash, PURPOSE, hashlib.sha256).digest()


def key_from_token(token: str) -> bytes:
    """The frame key of the device holding ``token`` (the device's side)."""
    return key_from_token_hash(hashlib.sha256(token.encode("utf-8")).digest())


def _mac(key: bytes, topic: str, frame: bytes) -> bytes:
    return hmac.new(key, topic.encode("utf-8") + b"\0" + frame, hashlib.sha256).digest()


def seal(key: bytes, topic: str, frame: bytes) -> bytes:
    """The payload that carries the serialized ``frame`` on ``topic``, authenticated with ``key``."""
    return mq.Sealed(frame=frame, mac=_mac(key, topic, frame)).SerializeToString()


def unsealed(frame: bytes) -> bytes:
    """The payload of a frame sent without authentication (only a refusal of one that failed it)."""
    return mq.Sealed(frame=frame).SerializeToString()


def open_payload(payload: bytes) -> mq.Sealed:
    """The ``Sealed`` a payload holds; ``Rejected(INVALID_ARGUMENT)`` when it is not one."""
    sealed = parse_message(mq.Sealed, payload)
    if sealed.mac and len(sealed.mac) != MAC_BYTES:
        raise Rejected(
            Reason.INVALID_ARGUMENT, f"an authentication code of {len(sealed.mac)} bytes; expected {MAC_BYTES}"
        )
    return sealed


def verified(key: bytes, topic: str, sealed: mq.Sealed) -> bool:
    """Whether ``sealed`` carries a frame that ``key``'s holder sealed for ``topic`` (constant time)."""
    return bool(sealed.mac) and hmac.compare_digest(sealed.mac, _mac(key, topic, sealed.frame))
