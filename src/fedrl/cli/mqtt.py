"""The MQTT transport on the command line: options ``fedrl server`` and ``fedrl client`` share,
and the checks that turn them into ``BrokerOptions``."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported where used: `fedrl --help` need not load paho
    from fedrl.wire.mqtt_client import BrokerOptions


class Transport(str, enum.Enum):
    """How server and devices talk: gRPC directly, or MQTT through a broker."""

    grpc = "grpc"
    mqtt = "mqtt"


TRANSPORT = typer.Option(
    Transport.grpc,
    "--transport",
    envvar="FEDRL_TRANSPORT",
    help="grpc, or mqtt: through the broker at --broker (see docs/mqtt.md).",
)
BROKER = typer.Option(
    "127.0.0.1:1883", "--broker", envvar="FEDRL_BROKER", help="With --transport mqtt: the broker, HOST:PORT."
)
FLEET = typer.Option(
    "default",
    "--fleet",
    envvar="FEDRL_FLEET",
    help="With --transport mqtt: the fleet, whose topics are fedrl/FLEET/...",
)
BROKER_USER = typer.Option(
    None, "--broker-user", help="The server's broker username (the example ACL's server user is fedrl-server)."
)
BROKER_PASSWORD = typer.Option(
    None,
    "--broker-password",
    envvar="FEDRL_BROKER_PASSWORD",
    help="Broker password; prefer FEDRL_BROKER_PASSWORD (a command line is visible to other users).",
)
MQTT_VERSION = typer.Option("5", "--mqtt-version", help="5, or 3.1.1 for a broker without MQTT 5.")


def broker_options(
    address: str,
    fleet: str,
    user: str | None,
    password: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    insecure: bool,
    mqtt_version: str,
) -> BrokerOptions:
    """The broker to use, after checking the options fit together; TLS when ``ca`` is given, plain
    text only with ``insecure`` on a loopback address. ``ValueError`` says what to change."""
    from fedrl.wire.mqtt_client import BrokerOptions, parse_address
    from fedrl.wire.tls import ensure_plaintext_allowed

    if mqtt_version not in ("5", "3.1.1"):
        raise ValueError(f"--mqtt-version {mqtt_version!r}: use 5 or 3.1.1")
    if ca is None:
        if cert is not None or key is not None:
            raise ValueError("a client certificate for the broker needs the CA that signed the broker's certificate")
        ensure_plaintext_allowed(address, insecure)
    elif insecure:
        raise ValueError("--insecure asks for plain text but a CA asks for TLS: give one of them")
    host, port = parse_address(address)
    return BrokerOptions(host, port, fleet, user, password, ca, cert, key, mqtt5=mqtt_version == "5")
