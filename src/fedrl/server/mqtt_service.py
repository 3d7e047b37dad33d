"""The federation served through an MQTT broker: the ``Coordinator`` behind a fleet's topics.

The server holds one persistent session with the broker (``fedrl.wire.mqtt_client``) and
subscribes to every device's ``up`` and ``status`` topic (``fedrl.wire.mqtt_topics``). Every
frame on a device's ``up`` topic must be sealed with that device's frame key
(``fedrl.wire.mqtt_seal``, derived from its token, which never travels); one that is not is
refused with UNAUTHENTICATED -- so a login that can publish anywhere on the broker still cannot
speak for another device -- and every reply is sealed the same way. Frames are reassembled
(``fedrl.wire.mqtt_frames``: manifest, per-chunk and whole-message sha256, resends), the request
is answered by the coordinator, and the reply goes back in frames on the device's ``down``
topic. A refusal is a ``Refusal`` reply naming its ``Reason`` with the coordinator's message.

Exactly once: a frame redelivered by QoS 1 is recognised by its message id and ignored; an
update sent again under a new request is recognised by its update id by the coordinator,
which answers with the original acknowledgement and stores nothing twice.

The deployed version is announced as a retained ``ModelHeader`` on the fleet's ``model``
topic, so a device that wakes learns it at once; a device's will ("offline", retained, on its
``status`` topic) tells the server when it vanished.

Threads: paho's network thread only queues messages; one worker handles them in order (a chunk
never overtakes its manifest) and, between them, announces new versions and asks for chunks
that stopped coming. A message is acknowledged to the broker only once handled, so one that a
crash interrupted is delivered again when the server's session resumes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho

from fedrl.server.coordinator import Coordinator
from fedrl.server.log import log_event, logger
from fedrl.server.metrics import ServerMetrics
from fedrl.wire import convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire import mqtt_pb2 as mq
from fedrl.wire.convert import parse_message
from fedrl.wire.mqtt_client import BrokerOptions, Connection
from fedrl.wire.mqtt_frames import Inbox, Outbox, split
from fedrl.wire.mqtt_seal import SEAL_OVERHEAD, open_payload, seal, unsealed, verified
from fedrl.wire.mqtt_topics import OFFLINE, ONLINE
from fedrl.wire.records import Reason, Rejected

REQUEST_OVERHEAD = 64 * 1024  # the protobuf framing around an update's bytes, generously
TRANSPORT = "mqtt"  # the label of this transport in the byte counters
HOUSEKEEPING_S = 0.2
TAKEN_OVER = "Session taken over"  # the MQTT 5 reason code 0x8E, as paho spells it
CONTESTED_DROPS, CONTESTED_WINDOW_S = 3, 30.0  # this many drops this fast: two clients fight over the session


def _refusal(reason: str, message: str) -> mq.Reply:
    """A ``Reply`` refusing a request for ``reason`` (a ``Reason`` value, or INTERNAL)."""
    return mq.Reply(refusal=mq.Refusal(reason=reason, message=message))


class MqttService:
    """The coordinator served on one fleet's topics; ``close()`` stops it."""

    def __init__(self, coordinator: Coordinator, options: BrokerOptions, metrics: ServerMetrics | None = None) -> None:
        self._coordinator, self._topics = coordinator, options.topics
        self._received = metrics.bytes_received.labels(transport=TRANSPORT) if metrics else None
        self._sent = metrics.bytes_sent.labels(transport=TRANSPORT) if metrics else None
        self._rejected = metrics.updates_rejected if metrics else None
        # a request holds at most one update (the largest message a device sends) and its framing
        self._inbox = Inbox(
            min(coordinator.max_update_bytes + REQUEST_OVERHEAD, coordinator.config.limits.max_message_bytes)
        )
        self._outbox = Outbox()
        self._presence: dict[str, str] = {}
        self._announced: int | None = None
        self._queue: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._stop = threading.Event()
        self._calls: dict[str, Callable[[str, mq.Request], mq.Reply | None]] = {
            "register": self._register,
            "heartbeat": self._heartbeat,
            "task": self._task,
            "pull": self._pull,
            "push": self._push,
            "secure": self._secure_step,
        }
        self.sessions_lost = 0  # times the server's session was taken over or lost
        self._drops: list[float] = []  # when the session last dropped (monotonic), within the window
        self._ever_connected = False
        self._client_id = f"fedrl-server-{options.fleet}"
        self._connection = Connection(
            options,
            self._client_id,
            [self._topics.every("up"), self._topics.every("status")],
            self._queue.put,
            on_connected=self._reconnected,
            manual_ack=True,
            on_disconnected=self._disconnected,
        )
        self._worker = threading.Thread(target=self._work, name="fedrl-mqtt", daemon=True)
        self._worker.start()

    @property
    def connection(self) -> Connection:
        """The server's session with the broker."""
        return self._connection

    @property
    def presence(self) -> dict[str, str]:
        """Each device's last status: "online", or "offline" (it said goodbye or its will fired)."""
        return dict(self._presence)

    # --- the worker ------------------------------------------------------------------------
    def _work(self) -> None:
        """Handle messages in arrival order; housekeeping between them."""
        next_housekeeping = 0.0
        while not self._stop.is_set():
            try:
                message = self._queue.get(timeout=HOUSEKEEPING_S)
            except queue.Empty:
                message = None
            if message is not None:
                try:
                    self._handle(message)
                except Exception as error:
                    logger.error("mqtt_message_failed", exc_info=error, extra={"fields": {"topic": message.topic}})
                self._connection.ack(message)
            if time.monotonic() >= next_housekeeping:
                self._housekeeping()
                next_housekeeping = time.monotonic() + HOUSEKEEPING_S

    def _handle(self, message: paho.MQTTMessage) -> None:
        try:
            client = self._topics.client_of(message.topic)
        except ValueError:
            return
        if message.topic == self._topics.status(client):
            self._status(client, message.payload)
        elif message.topic == self._topics.up(client):
            if self._received is not None:
                self._received.inc(len(message.payload))
            self._frame(client, message.payload)

    def _status(self, client: str, payload: bytes) -> None:
        status = {ONLINE: "online", OFFLINE: "offline"}.get(payload)
        if status is not None and self._presence.get(client) != status:
            self._presence[client] = status
            log_event(f"client_{status}", client=client)

    def _housekeeping(self) -> None:
        """Announce a newly deployed version; ask again for chunks that stopped coming."""
        try:
            self._announce()
            for (client, message_id), missing in self._inbox.stalled():
                self._publish(
                    client, mq.Frame(message_id=message_id, resend=mq.Resend(indices=missing)).SerializeToString()
                )
        except Exception as error:
            logger.error("mqtt_housekeeping_failed", exc_info=error)

    def _disconnected(self, reason: str) -> None:
        """A dropped session: the broker may say it was taken over (MQTT 5, when it sends the
        reason); drops in quick succession say the same when it does not."""
        now = time.monotonic()
        self._drops = [t for t in self._drops if now - t < CONTESTED_WINDOW_S] + [now]
        if reason == TAKEN_OVER:
            self._session_lost("the broker said the session was taken over")
        elif len(self._drops) >= CONTESTED_DROPS:
            self._session_lost(f"the session dropped {len(self._drops)} times in {CONTESTED_WINDOW_S:g} s")

    def _reconnected(self, connection: Connection) -> None:
        """After every connect: announce again, in case the broker lost its retained messages;
        a reconnect that finds the server's session gone means someone took or ended it."""
        self._announced = None
        if self._ever_connected and not connection.session_present:
            self._session_lost("the broker no longer held the server's session when it reconnected")
        self._ever_connected = True

    def _session_lost(self, evidence: str) -> None:
        self.sessions_lost += 1
        log_event(
            "mqtt_session_lost",
            level="error",
            client_id=self._client_id,
            broker=self._connection.options.address,
            evidence=evidence,
            message=(
                f"another login may have connected with the server's client id {self._client_id!r} (or the broker "
                "restarted without persistence): requests queued for the server may be lost; bind client ids to "
                "usernames (use_username_as_clientid true, examples/mosquitto/mosquitto.conf), check who holds "
                "broker logins, and give the broker a persistence file"
            ),
        )

    def _announce(self) -> None:
        version = self._coordinator.deployed_version
        if version == self._announced:
            return
        model = self._coordinator.model(version)
        header = pb.ModelHeader(version=model.version, round=model.round, params=convert.vector_header(model.params))
        if model.eval_return is not None:
            header.eval_return = model.eval_return
        self._connection.publish(self._topics.model, header.SerializeToString(), retain=True)
        self._announced = version
        log_event("model_announced", version=version, topic=self._topics.model)

    # --- frames ----------------------------------------------------------------------------
    def _frame(self, client: str, payload: bytes) -> None:
        """Authenticate one sealed frame with ``client``'s frame key, reassemble, answer. A frame
        that does not verify -- another device's key, a changed byte, a name never enrolled -- is
        refused with UNAUTHENTICATED, unsealed: who cannot seal cannot check a sealed answer."""
        frame = mq.Frame()
        try:
            sealed = open_payload(payload)
            frame = parse_message(mq.Frame, sealed.frame)  # its message id, for the refusal's sake
            if not verified(self._coordinator.frame_key(client), self._topics.up(client), sealed):
                raise Rejected(
                    Reason.UNAUTHENTICATED,
                    f"the frame is not sealed with {client!r}'s token: the device holds another token, or "
                    "someone else publishes on its topic",
                )
        except Rejected as refusal:
            self._refuse(client, frame, refusal)
            return
        reply = self._answer(client, frame)
        if reply is not None:
            self._send(client, frame.message_id, reply)

    def _refuse(self, client: str, frame: mq.Frame, refusal: Rejected) -> None:
        """Tell ``client`` why its frame was refused: once per message, not again for each chunk;
        unsealed, since the frame was not authenticated (the device accepts only UNAUTHENTICATED so)."""
        self._coordinator.refusals.log(
            "frame_refused", (client, refusal.reason), transport=TRANSPORT, client=client, code=refusal.reason.value,
            message=refusal.message,
        )  # fmt: skip
        if frame.WhichOneof("body") not in ("chunk", "resend"):
            reply = _refusal(refusal.reason.value, refusal.message).SerializeToString()
            self._publish(client, split(frame.message_id, reply, self._max_frame).frames[0], sealed=False)

    def _answer(self, client: str, frame: mq.Frame) -> mq.Reply | None:
        """The reply to the request ``frame`` completes (None while incomplete); every failure is a ``Refusal``."""
        try:
            return self._request(client, frame)
        except Rejected as refusal:
            self._coordinator.refusals.log(
                "call_refused", (client, refusal.reason), transport=TRANSPORT, client=client,
                code=refusal.reason.value, message=refusal.message,
            )  # fmt: skip
            return _refusal(refusal.reason.value, refusal.message)
        except Exception as error:  # a bug or a failing disk: answer, log, keep serving
            logger.error("call_failed", exc_info=error, extra={"fields": {"transport": TRANSPORT, "client": client}})
            return _refusal("INTERNAL", f"internal server error ({type(error).__name__}); see the server log")

    def _request(self, client: str, frame: mq.Frame) -> mq.Reply | None:
        """Serve a resend, or feed the inbox and answer the request ``frame`` completes, if any."""
        key = (client, frame.message_id)
        if frame.WhichOneof("body") == "resend":
            for again in self._outbox.resend(key, frame.resend.indices):
                self._publish(client, again)
            return None
        offered = self._inbox.offer(key, frame)
        if offered.resend:
            self._publish(
                client,
                mq.Frame(message_id=frame.message_id, resend=mq.Resend(indices=offered.resend)).SerializeToString(),
            )
        if offered.duplicate:
            log_event("duplicate_frame", level="debug", client=client, message_id=frame.message_id)
        if offered.message is None:
            return None
        request = parse_message(mq.Request, offered.message)
        call = request.WhichOneof("call")
        if call is None:
            raise Rejected(
                Reason.INVALID_ARGUMENT, "a request must name its call (register, heartbeat, task, pull, push, secure)"
            )
        return self._calls[call](client, request)

    @property
    def _max_frame(self) -> int:
        return self._connection.max_payload - SEAL_OVERHEAD

    def _send(self, client: str, message_id: str, reply: mq.Reply) -> None:
        outgoing = split(message_id, reply.SerializeToString(), self._max_frame)
        self._outbox.put((client, message_id), outgoing)
        for frame in outgoing.frames:
            self._publish(client, frame)

    def _publish(self, client: str, frame: bytes, sealed: bool = True) -> None:
        """Publish a serialized frame on ``client``'s down topic, sealed with its frame key."""
        topic = self._topics.down(client)
        payload = seal(self._coordinator.frame_key(client), topic, frame) if sealed else unsealed(frame)
        self._connection.publish(topic, payload)
        if self._sent is not None:
            self._sent.inc(len(payload))

    # --- the calls -------------------------------------------------------------------------
    def _register(self, client: str, request: mq.Request) -> mq.Reply:
        claimed = request.register.client
        if claimed != client:
            raise Rejected(
                Reason.PERMISSION_DENIED, f"the token belongs to {client!r}; it cannot register as {claimed!r}"
            )
        return mq.Reply(registration=convert.registration_message(self._coordinator.register(client)))

    def _heartbeat(self, client: str, request: mq.Request) -> None:
        beat = request.heartbeat
        self._coordinator.heartbeat(client, beat.acting_version if beat.HasField("acting_version") else None)

    def _task(self, client: str, _request: mq.Request) -> mq.Reply:
        answer = self._coordinator.task(client)
        try:
            self._announce()  # the version an answer may name ("finished": the last) is announced before it
        except Exception as exc:  # the answer stands; housekeeping announces it again
            log_event("model_announce_failed", level="warning", error=repr(exc))
        return mq.Reply(task=mq.TaskStream(parts=convert.task_parts(answer)))

    def _pull(self, client: str, request: mq.Request) -> mq.Reply:
        self._coordinator.admit(client)
        pull = request.pull
        model = self._coordinator.model(pull.version if pull.HasField("version") else None)
        return mq.Reply(model=mq.ModelStream(parts=convert.model_parts(model)))

    def _push(self, client: str, request: mq.Request) -> mq.Reply:
        try:
            submission = convert.read_update(
                request.push.parts, self._coordinator.max_update_bytes, self._coordinator.dim
            )
        except Rejected as refusal:  # the coordinator counts the refusals it makes itself
            if self._rejected is not None:
                self._rejected.labels(reason=refusal.reason.value).inc()
            raise
        return mq.Reply(ack=convert.ack_message(self._coordinator.submit(client, submission, verified=True)))

    def _secure_step(self, client: str, request: mq.Request) -> mq.Reply:
        round_, step, payload = convert.read_secure_request(request.secure)
        reply = self._coordinator.secure_step(client, round_, step, payload)
        return mq.Reply(secure=convert.secure_reply_message(reply))

    def close(self) -> None:
        """Stop handling messages and leave the broker (the session and its queue stay there)."""
        self._stop.set()
        self._worker.join()
        self._connection.close()
