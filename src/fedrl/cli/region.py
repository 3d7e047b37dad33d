"""``fedrl aggregator``: run a regional aggregator between a server (its parent) and its devices."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedrl.cli.console import fail
from fedrl.cli.deploy import STATE_DIR, serving_transport, stop_on_signals
from fedrl.cli.edge import ALLOW_CODE, channel_credentials, read_token
from fedrl.cli.mqtt import (
    BROKER,
    BROKER_PASSWORD,
    BROKER_USER,
    FLEET,
    MQTT_VERSION,
    TRANSPORT,
    Transport,
)


def aggregator(
    parent: str = typer.Option(
        ...,
        "--parent",
        envvar="FEDRL_PARENT",
        help="The parent's gRPC address, HOST:PORT: the root server, or another aggregator.",
    ),
    name: str = typer.Option(
        ..., "--name", envvar="FEDRL_NAME", help="This region's name, as enrolled with `fedrl fleet add-region NAME`."
    ),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="FEDRL_TOKEN", help="The region's token at its parent; prefer --token-file."
    ),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the region's token."),
    parent_ca: Optional[Path] = typer.Option(
        None, "--parent-ca", help="CA (PEM) that signed the parent's certificate: reach the parent with TLS."
    ),
    parent_cert: Optional[Path] = typer.Option(None, "--parent-cert", help="Client certificate for the parent."),
    parent_key: Optional[Path] = typer.Option(None, "--parent-key", help="Its private key."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Region YAML: rounds, limits, store (no experiment: the parent's is trained)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set rounds.updates_per_round=20."),
    state_dir: Path = STATE_DIR,
    listen: str = typer.Option("127.0.0.1:50052", "--listen", help="gRPC address for the devices, HOST:PORT."),
    metrics: str = typer.Option("127.0.0.1:9109", "--metrics", help="Prometheus HOST:PORT, or 'off'."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="The region's certificate for its devices."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="Its private key."),
    client_ca: Optional[Path] = typer.Option(None, "--client-ca", help="Require device certificates of this CA."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain text to devices and parent (loopback only)."),
    exit_when_finished: bool = typer.Option(
        False,
        "--exit-when-finished",
        help="Stop once the parent's run is over and every device in touch has heard so (liveness_s + a few polls).",
    ),
    transport: Transport = TRANSPORT,
    broker: str = BROKER,
    fleet_name: str = FLEET,
    broker_user: Optional[str] = BROKER_USER,
    broker_password: Optional[str] = BROKER_PASSWORD,
    broker_ca: Optional[Path] = typer.Option(None, "--broker-ca", help="With --transport mqtt: the broker's CA."),
    broker_cert: Optional[Path] = typer.Option(None, "--broker-cert", help="With --transport mqtt: client cert."),
    broker_key: Optional[Path] = typer.Option(None, "--broker-key", help="With --transport mqtt: its key."),
    mqtt_version: str = MQTT_VERSION,
    allow_code: list[str] = ALLOW_CODE,
) -> None:
    """Serve a region: its devices train the parent's rounds here (gRPC, or MQTT through a broker),
    and one update per round, reduced by the experiment's robust rule and weighted by its devices'
    env steps, goes to the parent (docs/hierarchy.md). JSON log lines on stderr."""
    from fedrl.edge.device import Fatal
    from fedrl.experiment.config import ConfigError
    from fedrl.policy.usercode import only_code
    from fedrl.region.app import ParentOptions, run_aggregator
    from fedrl.server.app import ServeOptions
    from fedrl.server.log import setup_logging

    setup_logging()
    try:
        secret = read_token(token, token_file)
        upward = channel_credentials(parent, parent_ca, parent_cert, parent_key, insecure and parent_ca is None)
        credentials, broker_opts = serving_transport(
            transport,
            (listen, tls_cert, tls_key, client_ca),
            (broker, fleet_name, broker_user, broker_password, broker_ca, broker_cert, broker_key, mqtt_version),
            insecure,
        )
        options = ServeOptions(
            state_dir, listen, None if metrics == "off" else metrics, credentials, exit_when_finished, broker_opts
        )
        stop = stop_on_signals()
        with only_code(allow_code):  # the parent names its robust rule (and network): the operator allows them
            run_aggregator(ParentOptions(parent, name, secret, upward), options, stop, config, set_)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError, Fatal) as exc:
        fail(str(exc))
