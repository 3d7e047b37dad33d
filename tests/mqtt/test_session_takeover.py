"""No broker login can take over the server's session by connecting with its client id, once the
broker binds client ids to usernames (``use_username_as_clientid``, as examples/mosquitto/mosquitto.conf
sets it)."""

from __future__ import annotations

import logging
import time

import paho.mqtt.client as paho

from fedrl.server.log import logger

from .conftest import FLEET, PASSWORDS


def _hijack(port: int, user: str) -> paho.Client:
    """A login as ``user`` that claims the server's client id."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, f"fedrl-server-{FLEET}", protocol=paho.MQTTv5)
    client.username_pw_set(user, PASSWORDS[user])
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _disconnects(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "broker_disconnected"]


def test_a_device_login_cannot_take_the_servers_session_when_ids_are_bound(start_broker, start_fleet, caplog):
    # Prepare
    broker = start_broker(bind_client_ids=True)
    fleet = start_fleet(broker=broker)
    logger.propagate, caplog.handler.level = True, logging.DEBUG

    # Execute
    hijacker = _hijack(broker.port, "alice")
    time.sleep(1.5)

    # Assert: the server's session is untouched
    assert fleet.service.connection.connected.is_set() and not _disconnects(caplog)
    hijacker.loop_stop()
    hijacker.disconnect()


def test_without_bound_ids_a_takeover_of_the_servers_session_is_detected_and_named(start_broker, start_fleet, caplog):
    # Prepare: the broker lets any login claim any client id
    broker = start_broker(bind_client_ids=False)
    fleet = start_fleet(broker=broker)
    logger.propagate, caplog.handler.level = True, logging.DEBUG

    # Execute
    hijacker = _hijack(broker.port, "alice")
    deadline = time.monotonic() + 10
    while not fleet.service.sessions_lost and time.monotonic() < deadline:
        time.sleep(0.05)
    hijacker.loop_stop()
    hijacker.disconnect()

    # Assert: the server says what happened and what to change, and gets its session back
    (lost,) = [r for r in caplog.records if r.getMessage() == "mqtt_session_lost"][:1]
    assert lost.levelname == "ERROR" and "use_username_as_clientid" in lost.fields["message"]
    assert fleet.service.connection.connected.wait(10)
    assert fleet.link("bob").register().client == "bob"
