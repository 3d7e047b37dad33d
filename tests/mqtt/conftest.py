"""Real Mosquitto brokers on free loopback ports, and a coordinator served through one.

Every broker, service, link and raw client a test starts is stopped after it, pass or fail.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from fedrl.edge.mqtt_link import MqttLink
from fedrl.server.config import ServerConfig, load_server_config
from fedrl.server.coordinator import Coordinator
from fedrl.server.metrics import ServerMetrics
from fedrl.server.mqtt_service import MqttService
from fedrl.server.store import Store
from fedrl.wire.broker import Mosquitto
from fedrl.wire.mqtt_client import BrokerOptions

NAMES = ("alice", "bob", "carol")
SERVER_USER = "fedrl-server"
PASSWORDS = {SERVER_USER: "server-secret", **{name: f"{name}-secret" for name in NAMES}}
PACKET_LIMIT = 8192  # the broker's packet limit: a model of the test experiment (9k parameters) is five chunks
FLEET = "test"


@pytest.fixture
def start_broker(tmp_path):
    """Start a broker (password logins, the fleet ACL and a packet limit unless told otherwise)."""
    started: list[Mosquitto] = []

    def start(**changes) -> Mosquitto:
        settings = dict(users=PASSWORDS, acl_server_user=SERVER_USER, max_packet_bytes=PACKET_LIMIT)
        broker = Mosquitto(tmp_path / f"broker-{len(started)}", **{**settings, **changes})
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()


def server_config(tmp_path: Path, *overrides: str) -> ServerConfig:
    path = tmp_path / "server.yaml"
    path.write_text(
        "experiment:\n"
        "  seed: 5\n"
        "  learner: {name: ppo, hidden: [64, 64]}\n"  # 9155 parameters: 36 kB, larger than a packet
        "  federation: {n_clients: 3, rounds: 4, local_steps: 64, stop_at_target: false}\n"
        "gate: {enabled: false}\n"
    )
    return load_server_config(path, list(overrides))


def options(broker: Mosquitto, user: str | None, **changes) -> BrokerOptions:
    """How ``user`` reaches ``broker`` with its password (no login for None)."""
    settings = dict(port=broker.port, fleet=FLEET, username=user, password=PASSWORDS.get(user))
    return BrokerOptions(**{**settings, **changes})


@dataclass
class Fleet:
    """A coordinator served through a broker, three enrolled devices, and what was opened to them."""

    broker: Mosquitto
    coordinator: Coordinator
    service: MqttService
    tokens: dict[str, str]
    metrics: ServerMetrics
    state_dir: Path
    opened: list = field(default_factory=list)

    def options(self, user: str | None, **changes) -> BrokerOptions:
        """How ``user`` reaches the fleet's broker."""
        return options(self.broker, user, **changes)

    def link(self, name: str, token: str | None = None, timeout_s: float = 10.0, **changes) -> MqttLink:
        """A device's link; with ``changes`` to its broker options (``username``, ``mqtt5``, ...)."""
        link = MqttLink(self.options(name, **changes), self.tokens[name] if token is None else token, name, timeout_s)
        self.opened.append(link)
        return link

    def raw(self, user: str) -> RawClient:
        """A raw client logged in as ``user``."""
        client = RawClient(self.options(user))
        self.opened.append(client)
        return client

    def updates(self) -> dict[str, int]:
        """Updates accepted so far, per client, as the server's store has them."""
        return {c.client: c.updates_accepted for c in self.coordinator.status().clients}


class RawClient:
    """A plain paho client, for what a well-behaved link never sends; records what it receives
    and the broker's answer (PUBACK reason) to each publish."""

    def __init__(self, broker: BrokerOptions) -> None:
        self.received: list[paho.MQTTMessage] = []
        self.puback: dict[int, str] = {}
        self._arrived = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, f"raw-{broker.username}", protocol=paho.MQTTv5)
        self.client.username_pw_set(broker.username, broker.password)
        self.client.on_message = self._message
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.puback.__setitem__(mid, str(reason))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _message(self, _client, _userdata, message: paho.MQTTMessage) -> None:
        with self._arrived:
            self.received.append(message)
            self._arrived.notify_all()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        time.sleep(0.2)  # let the SUBACK come back before anything is published

    def publish(self, topic: str, payload: bytes) -> str:
        """Publish with QoS 1; returns the broker's PUBACK reason."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        deadline = time.monotonic() + 5
        while info.mid not in self.puback and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.puback.get(info.mid, "no PUBACK")

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[paho.MQTTMessage]:
        """The first ``count`` messages received, waiting for them up to ``timeout_s``."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.received) >= count, timeout_s)
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def start_fleet(tmp_path, start_broker):
    """Serve a fresh coordinator through a broker (the default one unless given; config overrides
    allowed); all stopped after the test."""
    fleets: list[Fleet] = []

    def start(*overrides: str, broker: Mosquitto | None = None, **service_options) -> Fleet:
        broker = broker or start_broker()
        state_dir = tmp_path / f"state-{len(fleets)}"
        store = Store(state_dir)
        tokens = {name: store.add_client(name, time.time()) for name in NAMES}
        store.close()
        metrics = ServerMetrics.create()
        coordinator = Coordinator.open(server_config(tmp_path, *overrides), state_dir, metrics)
        service = MqttService(coordinator, options(broker, SERVER_USER, **service_options), metrics)
        assert service.connection.connected.wait(10), broker.log_path.read_text()
        fleets.append(Fleet(broker, coordinator, service, tokens, metrics, state_dir))
        return fleets[-1]

    yield start
    for fleet in fleets:
        for opened in fleet.opened:
            opened.close()
        fleet.service.close()
        fleet.coordinator.close()


@pytest.fixture
def fleet(start_fleet) -> Fleet:
    return start_fleet()
