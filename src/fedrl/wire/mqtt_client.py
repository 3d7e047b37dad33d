"""One side's session with the MQTT broker: credentials, TLS, a persistent session, reconnection.

Server and edge agents both connect through ``Connection`` (paho-mqtt underneath). It speaks
MQTT 5 unless told the broker only has 3.1.1, and always asks for a persistent session (MQTT 5:
clean start off and a session expiry; 3.1.1: clean session off), so what is published to a
device while it sleeps or has no coverage is queued by the broker and delivered when it comes
back. It reconnects by itself, subscribes again on every connect, and learns the broker's
packet limit from its CONNACK (MQTT 5), which bounds the frames it sends (``max_payload``).

Authentication to the broker is a username and password, a client certificate, or both; TLS
is on when a CA is given. The caller checks that plain text is allowed
(``fedrl.wire.tls.ensure_plaintext_allowed``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fedrl.wire.mqtt_topics import OFFLINE, QOS, Topics

log = logging.getLogger("fedrl.mqtt")
DENIALS_KEPT = 256
PACKET_HEADROOM = 512  # bytes of a PUBLISH packet that are not payload: fixed header, topic, properties


@dataclass(frozen=True)
class BrokerOptions:
    """How to reach the broker and behave there; one per process."""

    host: str = "127.0.0.1"
    port: int = 1883
    fleet: str = "default"  # the fleet's topics: fedrl/FLEET/...
    username: str | None = None  # broker login; a device's is its client name (the ACL's %u)
    password: str | None = None
    ca: Path | None = None  # TLS to the broker, trusting this CA; None: plain text
    cert: Path | None = None  # client certificate (with key) for brokers that authenticate by certificate
    key: Path | None = None
    mqtt5: bool = True  # False: MQTT 3.1.1 (no session expiry, no packet limit in CONNACK)
    keepalive_s: int = 10  # a silent device is declared gone (its will published) after 1.5x this
    session_expiry_s: int = 7 * 24 * 3600  # how long the broker keeps a disconnected session's queue
    max_payload: int = 256 * 1024  # largest frame sent; lowered to the broker's packet limit when it has one

    @property
    def address(self) -> str:
        """``HOST:PORT``, as given on the command line."""
        return f"{self.host}:{self.port}"

    @property
    def topics(self) -> Topics:
        """The fleet's topic layout."""
        return Topics(self.fleet)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) as a host and a port; ``ValueError`` when it is not one."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"broker address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _tls_context(options: BrokerOptions) -> ssl.SSLContext:
    for path, what in (
        (options.ca, "CA certificate"),
        (options.cert, "client certificate"),
        (options.key, "client key"),
    ):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file (expected the broker's {what})")
    if (options.cert is None) != (options.key is None):
        raise ValueError("a client certificate for the broker needs both its certificate and its private key")
    context = ssl.create_default_context(cafile=str(options.ca))
    if options.cert is not None:
        context.load_cert_chain(str(options.cert), str(options.key))
    return context


def _no_delay(_client, _userdata, sock) -> None:
    """Send small frames at once: Nagle's algorithm against delayed ACKs adds ~40 ms per request."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Connection:
    """A persistent MQTT session that reconnects by itself; messages go to ``on_message`` on
        paho's network thread (an attribute: a wrapper may filter what reaches it), and
        ``on_connected`` is called with the connection after every connect (before anyone waiting for
        ``connected`` is woken); ``on_disconnected`` with the broker's reason when an established session
    drops. With ``manual_ack`` a QoS 1 message is acknowledged to the broker
        only by ``ack``, so one not yet handled is delivered again after a restart."""

    def __init__(
        self,
        options: BrokerOptions,
        client_id: str,
        subscriptions: Sequence[str],
        on_message: Callable[[paho.MQTTMessage], None],
        will_topic: str | None = None,
        on_connected: Callable[[Connection], None] = lambda _connection: None,
        manual_ack: bool = False,
        on_disconnected: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self.options, self._subscriptions = options, list(subscriptions)
        self.on_message, self._on_connected, self._on_disconnected = on_message, on_connected, on_disconnected
        self.connected = threading.Event()
        self.refusal = ""  # why the broker last refused the connection, if it did
        self.untrusted = ""  # why the broker's certificate failed verification, if it did
        self.session_present = False  # whether the broker still held this session at the last connect
        self._denied: OrderedDict[int, str] = OrderedDict()  # message id -> the broker's PUBACK reason
        self._packet_limit: int | None = None
        self._closing = False
        version = paho.MQTTv5 if options.mqtt5 else paho.MQTTv311
        session = {} if options.mqtt5 else {"clean_session": False}
        self._client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id, protocol=version, manual_ack=manual_ack, **session
        )
        self._configure(will_topic)
        properties = None
        if options.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = options.session_expiry_s
        self._client.connect_async(
            options.host, options.port, options.keepalive_s, clean_start=False, properties=properties
        )
        self._client.loop_start()

    def _configure(self, will_topic: str | None) -> None:
        client, options = self._client, self.options
        if options.username is not None:
            client.username_pw_set(options.username, options.password)
        if options.ca is not None:
            client.tls_set_context(_tls_context(options))
        if will_topic is not None:
            client.will_set(will_topic, OFFLINE, qos=QOS, retain=True)
        client.reconnect_delay_set(1, 4)
        client.on_connect, client.on_disconnect = self._connected, self._disconnected
        client.on_connect_fail = self._connect_failed
        client.on_message = self._deliver
        client.on_socket_open = _no_delay
        client.on_publish = self._published

    def _connected(self, client: paho.Client, _userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.refusal = str(reason)
            log.warning("broker_refused", extra={"fields": {"broker": self.options.address, "reason": str(reason)}})
            return
        self.refusal = ""
        self.session_present = bool(flags.session_present)
        self._packet_limit = getattr(properties, "MaximumPacketSize", None)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=QOS)
        self._on_connected(self)
        self.connected.set()
        log.info(
            "broker_connected",
            extra={"fields": {"broker": self.options.address, "session_present": flags.session_present}},
        )

    def _connect_failed(self, _client, _userdata) -> None:
        """Note a broker certificate that failed verification: unlike a refused or lost
        connection, no retry can mend it. paho calls this while handling the failure, so the
        exception is the one being handled."""
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLCertVerificationError):
            self.untrusted = (
                f"the broker's certificate failed verification ({error.verify_message}); give the CA "
                f"that signed it and dial a name it was issued for ({self.options.address})"
            )
            log.error("broker_untrusted", extra={"fields": {"broker": self.options.address, "error": str(error)}})

    def _deliver(self, _client, _userdata, message: paho.MQTTMessage) -> None:
        """Hand a message on; a handler's bug is logged rather than ending paho's network thread."""
        try:
            self.on_message(message)
        except Exception:
            log.exception("mqtt_message_failed", extra={"fields": {"topic": message.topic}})

    def _published(self, _client, _userdata, mid: int, reason, _properties) -> None:
        """Note a publish the broker refused (MQTT 5: an ACL says no, "Not authorized")."""
        if reason.is_failure:
            self._denied[mid] = str(reason)
            while len(self._denied) > DENIALS_KEPT:
                self._denied.popitem(last=False)

    def denial(self, info: paho.MQTTMessageInfo) -> str | None:
        """Why the broker refused the publish ``info`` stands for, or None (accepted, or not yet answered)."""
        return self._denied.pop(info.mid, None)

    def _disconnected(self, _client, _userdata, _flags, reason, _properties) -> None:
        if self.connected.is_set() and not self._closing:
            log.warning(
                "broker_disconnected", extra={"fields": {"broker": self.options.address, "reason": str(reason)}}
            )
            self._on_disconnected(str(reason))
        self.connected.clear()

    @property
    def max_payload(self) -> int:
        """The largest frame to publish: the configured size, within the broker's packet limit."""
        if self._packet_limit is None:
            return self.options.max_payload
        return min(self.options.max_payload, self._packet_limit - PACKET_HEADROOM)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> paho.MQTTMessageInfo:
        """Publish with QoS 1; queued by paho and sent after a reconnect if the link is down."""
        return self._client.publish(topic, payload, qos=QOS, retain=retain)

    def ack(self, message: paho.MQTTMessage) -> None:
        """Acknowledge a handled message to the broker (``manual_ack`` only)."""
        self._client.ack(message.mid, message.qos)

    def pause(self) -> None:
        """Stop talking to the broker without disconnecting, as a device that freezes or sleeps
        does: no keep-alive pings, so the broker soon counts the session as gone."""
        self._client.loop_stop()

    def resume(self) -> None:
        """Talk to the broker again after ``pause``: reconnect, and receive the session's queue."""
        self._client.loop_start()

    def close(self, goodbye: tuple[str, bytes] | None = None, timeout_s: float = 2.0) -> None:
        """Publish ``goodbye`` (topic, retained payload) if connected, then disconnect; a clean
        disconnect does not publish the will."""
        self._closing = True
        if goodbye is not None and self.connected.is_set():
            info = self.publish(*goodbye, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # the link went down: the will says the same
                info.wait_for_publish(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()
