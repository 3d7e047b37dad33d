"""The edge agent's ``Link`` through an MQTT broker: requests on the device's ``up`` topic,
replies on its ``down`` topic, matched by a request id.

The device keeps one persistent session with the broker (``fedrl.wire.mqtt_client``): what the
server answers while the device has no coverage waits in the broker and arrives when it comes
back, and its will ("offline", retained, on its ``status`` topic) tells the server when it
vanished. On every connect it says "online" there.

Each call sends a ``Request`` in frames (``fedrl.wire.mqtt_frames``), every frame sealed with
the device's frame key (``fedrl.wire.mqtt_seal``: derived from its token, which never travels),
and waits up to ``timeout_s`` for the ``Reply`` with the same id, asking again for chunks of it
that stop coming and sending again those the server asks for. A reply frame must be sealed with
the same key; anything else on the down topic is dropped and counted, except the unsealed
refusal with which the server answers a frame it could not authenticate. A heartbeat is
one frame with no reply: the deployed version it returns is the fleet's retained announcement.
Failures are sorted into the two the agent understands:

- ``Rejected`` when the server answered with a ``Refusal`` naming a ``Reason`` other than
  UNAVAILABLE, with its message;
- ``Unreachable`` when the server said UNAVAILABLE (its buffers are full: send again later), when
  no answer came in time (no broker, no server, no coverage, a broker that refused the login),
  the server answered INTERNAL, or it said it could not authenticate this device: that answer is
  unsealed, so anyone on a broker without the ACL could forge it, and stopping on it would let
  them stop the device -- the agent backs off, tries again, and says why;
- ``Untrusted`` when the broker's certificate fails verification: the agent stops.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from google.protobuf.message import DecodeError

from fedrl.edge.link import Unreachable, Untrusted
from fedrl.wire import convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire import mqtt_pb2 as mq
from fedrl.wire.mqtt_client import BrokerOptions, Connection
from fedrl.wire.mqtt_frames import Inbox, Outgoing, split
from fedrl.wire.mqtt_seal import SEAL_OVERHEAD, key_from_token, open_payload, seal, verified
from fedrl.wire.mqtt_topics import OFFLINE, ONLINE
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
    final_reason,
)

MAX_DOWNLOAD_BYTES = 2**32  # largest reply the link will reassemble (a billion float32)
RESEND_CHECK_S = 0.5  # how often a waiting call looks for chunks that stopped coming


@dataclass
class _Call:
    """A request waiting for its reply (mutable, private to ``MqttLink``)."""

    outgoing: Outgoing
    published: list[paho.MQTTMessageInfo] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    reply: bytes | None = None
    failure: str = ""


class MqttLink:
    """``Link`` for one client through the broker ``options`` names."""

    def __init__(self, options: BrokerOptions, token: str, client_name: str, timeout_s: float = 30.0) -> None:
        self.client_name = client_name
        self._topics, self._key, self._timeout_s = options.topics, key_from_token(token), timeout_s
        self._up, self._down = self._topics.up(client_name), self._topics.down(client_name)
        self._status = self._topics.status(client_name)
        self.forged = 0  # frames on the down topic that were not sealed with this device's key
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}
        self._inbox = Inbox(MAX_DOWNLOAD_BYTES, max_open_per_sender=8)  # replies from the one server
        self._announced: pb.ModelHeader | None = None
        self._announcement = threading.Event()
        self._connection = Connection(
            options,
            f"fedrl-{options.fleet}-{client_name}",
            [self._down, self._topics.model],
            self._received,
            will_topic=self._status,
            on_connected=self._online,
        )

    @property
    def connection(self) -> Connection:
        """The device's session with the broker."""
        return self._connection

    def _online(self, connection: Connection) -> None:
        connection.publish(self._status, ONLINE, retain=True)

    # --- receiving (paho's network thread) -------------------------------------------------
    def _received(self, message: paho.MQTTMessage) -> None:
        try:
            if message.topic == self._topics.model:
                self._announced = pb.ModelHeader.FromString(message.payload)
                self._announcement.set()
            elif message.topic == self._down:
                self._sealed_frame(open_payload(message.payload))
        except (DecodeError, Rejected):
            self.forged += 1  # not a frame of ours: nothing waits for it

    def _sealed_frame(self, sealed: mq.Sealed) -> None:
        """Hand on a frame sealed with this device's key; an unsealed one only when it is the
        server's refusal of a frame it could not authenticate, for a call still waiting."""
        frame = mq.Frame.FromString(sealed.frame)
        if verified(self._key, self._down, sealed):
            self._reply_frame(frame)
            return
        refusal = mq.Reply.FromString(frame.whole).refusal if not sealed.mac and frame.HasField("whole") else None
        with self._lock:
            call = self._calls.get(frame.message_id)
            if refusal is None or refusal.reason != Reason.UNAUTHENTICATED.value or call is None:
                self.forged += 1
                return
            call.failure = (
                f"the server could not authenticate this device: {refusal.message} (check its token; this "
                "answer is unsealed, so on a broker without the ACL it may not come from the server)"
            )
            call.done.set()

    def _reply_frame(self, frame: mq.Frame) -> None:
        with self._lock:
            call = self._calls.get(frame.message_id)
            if call is None:
                return  # the answer to a call that has given up, or a redelivery
            if frame.WhichOneof("body") == "resend":
                for again in call.outgoing.chunks(frame.resend.indices):
                    self._publish(again)
                return
            try:
                offered = self._inbox.offer(frame.message_id, frame)
            except Rejected as refusal:
                call.failure = refusal.message
                call.done.set()
                return
        if offered.resend:
            self._ask_again(frame.message_id, offered.resend)
        if offered.message is not None:
            call.reply = offered.message
            call.done.set()

    def _ask_again(self, message_id: str, indices: tuple[int, ...]) -> None:
        self._publish(mq.Frame(message_id=message_id, resend=mq.Resend(indices=indices)).SerializeToString())

    def _publish(self, frame: bytes) -> paho.MQTTMessageInfo:
        """Publish a serialized frame on the up topic, sealed with this device's key."""
        return self._connection.publish(self._up, seal(self._key, self._up, frame))

    def _split(self, message_id: str, request: mq.Request) -> Outgoing:
        return split(message_id, request.SerializeToString(), self._connection.max_payload - SEAL_OVERHEAD)

    # --- calling ---------------------------------------------------------------------------
    def _connected(self, name: str, deadline: float) -> None:
        """Wait for the broker; ``Untrusted`` as soon as its certificate fails verification."""
        while not self._connection.connected.wait(min(RESEND_CHECK_S, max(0.0, deadline - time.monotonic()))):
            if self._connection.untrusted:
                raise Untrusted(f"{name}: {self._connection.untrusted}")
            if time.monotonic() < deadline:
                continue
            refused = f" (the broker refused the login: {self._connection.refusal})" if self._connection.refusal else ""
            raise Unreachable(f"{name}: not connected to the broker {self._connection.options.address}{refused}")

    def _call(self, name: str, request: mq.Request, expected: str):
        """Send ``request`` and wait for its reply; the reply's ``expected`` field, or a failure."""
        deadline = time.monotonic() + self._timeout_s
        self._connected(name, deadline)
        message_id = uuid.uuid4().hex
        call = _Call(self._split(message_id, request))
        with self._lock:
            self._calls[message_id] = call
        try:
            call.published = [self._publish(frame) for frame in call.outgoing.frames]
            self._await(name, call, deadline)
        finally:
            with self._lock:
                del self._calls[message_id]
                self._inbox.forget(message_id)
        if call.reply is None:
            forged = f"; {self.forged} frames on {self._down} were not sealed with its key" if self.forged else ""
            raise Unreachable(
                f"{name}: {call.failure or f'no answer within {self._timeout_s:g} s'} "
                f"(broker {self._connection.options.address}{forged})"
            )
        try:
            reply = mq.Reply.FromString(call.reply)
        except DecodeError:
            raise Unreachable(f"{name}: the server's reply is not a fedrl.mqtt.v1.Reply") from None
        return _result(name, reply, expected)

    def _await(self, name: str, call: _Call, deadline: float) -> None:
        """Wait for the reply, asking again for chunks of it that stopped coming; ``Rejected`` when
        the broker refused a frame (its ACL does not let this login publish on this topic)."""
        while not call.done.wait(min(RESEND_CHECK_S, max(0.0, deadline - time.monotonic()))):
            denied = next(filter(None, map(self._connection.denial, call.published)), None)
            if denied is not None:
                raise Rejected(
                    Reason.PERMISSION_DENIED,
                    f"{name}: the broker refused to let "
                    f"{self._connection.options.username!r} publish on {self._up} ({denied}); a device's "
                    "broker username must be its client name",
                )
            if time.monotonic() >= deadline:
                return
            with self._lock:
                stalled = self._inbox.stalled()
            for message_id, missing in stalled:
                self._ask_again(message_id, missing)

    # --- the Link --------------------------------------------------------------------------
    def register(self) -> Registration:
        """Announce this client (idempotent) and learn the experiment it trains."""
        request = mq.Request(register=pb.RegisterRequest(client=self.client_name))
        return convert.read_registration(self._call("register", request, "registration"))

    def heartbeat(self, acting_version: int | None) -> int:
        """Report the version acting now (one frame, no reply); returns the announced deployed version."""
        deadline = time.monotonic() + self._timeout_s
        self._connected("heartbeat", deadline)
        request = mq.Request(heartbeat=pb.HeartbeatRequest(acting_version=acting_version))
        (frame,) = self._split(uuid.uuid4().hex, request).frames
        self._publish(frame)
        if not self._announcement.wait(max(0.0, deadline - time.monotonic())):
            raise Unreachable(f"heartbeat: no deployed version announced on {self._topics.model} yet")
        return self._announced.version

    def task(self) -> Task | Wait:
        """Ask what to do: train from a version for a round (with the server control, if any), or wait."""
        task = self._call("task", mq.Request(task=pb.TaskRequest()), "task")
        return convert.read_task(task.parts, MAX_DOWNLOAD_BYTES)

    def pull(self, version: int) -> Model:
        """Download one stored global version."""
        model = self._call("pull", mq.Request(pull=pb.PullRequest(version=version)), "model")
        return convert.read_model(model.parts, MAX_DOWNLOAD_BYTES)

    def push(self, submission: Submission) -> Ack:
        """Upload one update (in chunks when it is larger than a frame); returns its durable acknowledgement."""
        request = mq.Request(push=mq.UpdateStream(parts=convert.update_parts(submission)))
        return convert.read_ack(self._call("push", request, "ack"))

    def secure(self, round_: int, step: SecureStep, payload: bytes) -> SecureReply:
        """One step of a secure-aggregation round (or a poll, with an empty payload)."""
        reply = self._call("secure", mq.Request(secure=convert.secure_request(round_, step, payload)), "secure")
        return convert.read_secure_reply(reply)

    def close(self) -> None:
        """Say "offline" (a sleep, not a loss: the will stays unsent) and leave the broker; the
        session and what the broker queues for it stay until it expires."""
        self._connection.close(goodbye=(self._status, OFFLINE))


def _result(name: str, reply: mq.Reply, expected: str):
    """The ``expected`` field of a reply; ``Rejected`` for a refusal naming a reason, else ``Unreachable``."""
    kind = reply.WhichOneof("result")
    if kind == "refusal":
        reason, message = reply.refusal.reason, reply.refusal.message
        final = final_reason(reason)
        if final is not None:
            raise Rejected(final, message)
        raise Unreachable(f"{name}: {reason}: {message}")
    if kind != expected:
        raise Unreachable(f"{name}: the server answered with {kind!r} instead of {expected!r}")
    return getattr(reply, expected)
