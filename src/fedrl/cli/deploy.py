"""``fedrl server`` and ``fedrl fleet``: run the deployed server and manage its clients."""

from __future__ import annotations

import datetime
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from fedrl.cli.console import console, fail
from fedrl.cli.mqtt import (
    BROKER,
    BROKER_PASSWORD,
    BROKER_USER,
    FLEET,
    MQTT_VERSION,
    TRANSPORT,
    Transport,
    broker_options,
)

TOKEN_FILE = typer.Option(None, "--token-file", help="Write the token here (mode 600) instead of printing it.")
fleet = typer.Typer(help="Manage the clients of a server's state directory.", no_args_is_help=True)

STATE_DIR = typer.Option(Path("server-state"), "--state-dir", help="The server's state directory.")


def _grpc_credentials(listen: str, tls_cert: Path | None, tls_key: Path | None, client_ca: Path | None, insecure: bool):
    """The gRPC server's TLS credentials, or None for plain text (loopback with --insecure only)."""
    from fedrl.wire.tls import ensure_plaintext_allowed, server_credentials

    if tls_cert is None or tls_key is None:
        if tls_cert or tls_key or client_ca:
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        ensure_plaintext_allowed(listen, insecure)
        return None
    return server_credentials(tls_cert, tls_key, client_ca)


def server(
    config: Optional[Path] = typer.Option(None, "--config", help="Server YAML (experiment + deployment sections)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set rounds.deadline_s=30."),
    state_dir: Path = STATE_DIR,
    listen: str = typer.Option("127.0.0.1:50051", "--listen", help="gRPC address HOST:PORT (port 0: any free one)."),
    metrics: str = typer.Option("127.0.0.1:9108", "--metrics", help="Prometheus HOST:PORT, or 'off'."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Server certificate (PEM)."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="Server private key (PEM)."),
    client_ca: Optional[Path] = typer.Option(
        None, "--client-ca", help="Require client certificates signed by this CA."
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Plain text (loopback addresses only)."),
    exit_when_finished: bool = typer.Option(
        False,
        "--exit-when-finished",
        help="Stop once the run is over and every client in touch has heard so (at most liveness_s + a few polls).",
    ),
    init_from: Optional[Path] = typer.Option(
        None,
        "--init-from",
        help="Start a new run from a pre-trained policy: a run directory, a state directory or a policy file.",
    ),
    transport: Transport = TRANSPORT,
    broker: str = BROKER,
    fleet_name: str = FLEET,
    broker_user: Optional[str] = BROKER_USER,
    broker_password: Optional[str] = BROKER_PASSWORD,
    broker_ca: Optional[Path] = typer.Option(
        None, "--broker-ca", help="With --transport mqtt: CA (PEM) of the broker's certificate: TLS."
    ),
    broker_cert: Optional[Path] = typer.Option(
        None, "--broker-cert", help="With --transport mqtt: the server's client certificate for the broker."
    ),
    broker_key: Optional[Path] = typer.Option(None, "--broker-key", help="With --transport mqtt: its private key."),
    mqtt_version: str = MQTT_VERSION,
    callback: list[str] = typer.Option(
        [],
        "--callback",
        help="module:factory making a round callback (on_round, close) from the state directory; repeatable. "
        "TensorBoard event files go to STATE_DIR/tensorboard in any case.",
    ),
) -> None:
    """Serve a federation over gRPC or through an MQTT broker (rounds aggregated, evaluated,
    deployed); JSON log lines on stderr. The transport never changes what the experiment runs."""
    from fedrl.experiment.callbacks import callback_factories
    from fedrl.experiment.config import ConfigError
    from fedrl.server.app import ServeOptions, run_server
    from fedrl.server.config import load_server_config
    from fedrl.server.log import setup_logging

    setup_logging()
    try:
        cfg = load_server_config(config, set_)
        credentials, broker_opts = serving_transport(
            transport,
            (listen, tls_cert, tls_key, client_ca),
            (broker, fleet_name, broker_user, broker_password, broker_ca, broker_cert, broker_key, mqtt_version),
            insecure,
        )
        options = ServeOptions(
            state_dir,
            listen,
            None if metrics == "off" else metrics,
            credentials,
            exit_when_finished,
            broker_opts,
            init_from,
            tuple(callback_factories(callback)),
        )
        run_server(cfg, options, stop_on_signals())
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))


def serving_transport(transport: Transport, grpc_side: tuple, mqtt_side: tuple, insecure: bool) -> tuple:
    """``(grpc credentials, broker options)`` for serving devices: gRPC on ``grpc_side`` = (listen,
    tls_cert, tls_key, client_ca), or MQTT through ``mqtt_side`` = (broker, fleet, user, password,
    ca, cert, key, mqtt_version); the other is None. ``ValueError`` names a bad combination."""
    if transport is Transport.mqtt:
        broker, fleet_name, user, password, ca, cert, key, version = mqtt_side
        return None, broker_options(broker, fleet_name, user, password, ca, cert, key, insecure, version)
    return _grpc_credentials(*grpc_side, insecure), None


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets: the server's (or region's) loop stops cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _store(state_dir: Path):
    from fedrl.server.store import Store

    if not (state_dir / "server.db").exists():
        fail(
            f"{state_dir} is not a server state directory (no server.db); start `fedrl server --state-dir {state_dir}` "
            "or pass the right --state-dir"
        )
    return Store(state_dir)


@fleet.command("add-client")
def add_client(
    name: str = typer.Argument(..., help="The client's name (letters, digits, '-', '_', '.')."),
    state_dir: Path = STATE_DIR,
    token_file: Optional[Path] = TOKEN_FILE,
    same_token: Optional[Path] = typer.Option(
        None,
        "--same-token",
        help="Enrol with the token in this file (one another server of the hierarchy issued: a device's region "
        "and the one it fails over to) instead of a new one; the token is not printed again.",
    ),
) -> None:
    """Issue a token for a new client. The server keeps only its hash: store the token now."""
    from fedrl.server.store import Store

    if same_token is not None:
        token = _read_token_file(same_token)
        _changed(Store(state_dir), lambda store, now: store.add_client(name, now, token))
        console.print(f"{name} enrolled with the token in {same_token}", highlight=False)
        return
    _hand_over(name, _changed(Store(state_dir), lambda store, now: store.add_client(name, now)), token_file)


@fleet.command("add-region")
def add_region(
    name: str = typer.Argument(..., help="The regional aggregator's name (letters, digits, '-', '_', '.')."),
    devices: int = typer.Option(
        ...,
        "--devices",
        min=1,
        help="The most devices the region stands for: its update's weight is capped at "
        "this many devices' step budgets.",
    ),
    state_dir: Path = STATE_DIR,
    token_file: Optional[Path] = TOKEN_FILE,
) -> None:
    """Issue a token for a regional aggregator (`fedrl aggregator --name NAME`): a client whose one
    update per round reduces up to DEVICES devices' updates. The server keeps only its hash."""
    from fedrl.server.store import Store

    made = _changed(Store(state_dir), lambda store, now: store.add_client(name, now, devices=devices))
    _hand_over(name, made, token_file)


def _read_token_file(path: Path) -> str:
    """The token in ``path``, or one line and exit 2."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    if not token:
        fail(f"{path} is empty")
    return token


@fleet.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="The client whose token stops working."),
    state_dir: Path = STATE_DIR,
) -> None:
    """Revoke a client's token (a lost or stolen device): a running server refuses it within a
    second; `fedrl fleet rotate-token NAME` brings the client back with a new token."""
    _changed(_store(state_dir), lambda store, now: store.revoke(name, now))
    console.print(f"token of {name} revoked", highlight=False)


@fleet.command("rotate-token")
def rotate_token(
    name: str = typer.Argument(..., help="The client that gets a new token."),
    state_dir: Path = STATE_DIR,
    token_file: Optional[Path] = TOKEN_FILE,
) -> None:
    """Issue a new token for a client; its old token stops working within a second on a running
    server (a revoked client is active again)."""
    _hand_over(name, _changed(_store(state_dir), lambda store, _now: store.rotate_token(name)), token_file)


def _changed(store, change: Callable) -> str | None:
    """``change(store, now)``'s result, or one line and exit 2 for the ``ValueError`` it raises;
    the store is closed after."""
    import time

    try:
        return change(store, time.time())
    except ValueError as exc:
        fail(str(exc))
    finally:
        store.close()


def _hand_over(name: str, token: str, token_file: Path | None) -> None:
    """Print ``token``, or write it to ``token_file`` with mode 600."""
    import os

    if token_file is None:
        console.print(token, highlight=False, soft_wrap=True)
        return
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    console.print(f"token for {name} written to {token_file}", highlight=False)


def _when(t: float | None) -> str:
    """A UTC time, short enough for an 80-column table: month-day hour:minute."""
    return "-" if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%m-%d %H:%M")


def _number(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _size(n: int) -> str:
    """A byte count for people: B, KiB, MiB, GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _run_line(store, deployed: int | None, recent: list) -> str:
    """Where the run stands: finished (when), or which round of how many is open."""
    import yaml

    if deployed is None:
        return "deployed version: none yet (the server has not started)"
    finished = store.meta("finished_at")
    if finished is not None:
        return f"deployed version: [bold]{deployed}[/bold] · run finished {_when(float(finished))} UTC"
    experiment = yaml.safe_load(store.meta("experiment") or "{}") or {}
    total = experiment.get("federation", {}).get("rounds", "?")
    current = recent[-1].round if recent else 1
    return f"deployed version: [bold]{deployed}[/bold] · round {current} of {total} open"


def _outcome(r) -> str:
    if r.promoted is None:
        return "open"
    if r.promoted:
        return f"v{r.new_version}"
    return "rejected" if r.candidate_return is not None else "failed"


@fleet.command("status")
def status(
    state_dir: Path = STATE_DIR, rounds: int = typer.Option(10, "--rounds", help="Recent rounds to show.")
) -> None:
    """Where the run stands, the clients (last seen, acting version as each reports it, updates,
    token; a regional aggregator says so) and recent rounds (updates, their bytes on the wire,
    candidate return, outcome, and with DP the epsilon spent once each closed). Times are UTC."""
    from rich import box

    store = _store(state_dir)
    try:
        clients, recent, deployed = store.clients(), store.rounds(rounds), store.latest_version()
        console.print(_run_line(store, deployed, recent), highlight=False)
    finally:
        store.close()
    table = Table("client", "registered", "last seen", "acting", "updates", "token", title="clients", box=box.SIMPLE)
    for c in clients:
        table.add_row(
            c.client if c.devices is None else f"{c.client} (region, <= {c.devices} devices)",
            _when(c.registered_at),
            _when(c.last_seen),
            "-" if c.acting_version is None else f"v{c.acting_version}",
            str(c.updates_accepted),
            "valid" if c.revoked_at is None else f"revoked {_when(c.revoked_at)}",
        )
    console.print(table)
    table = Table(
        "round", "closed", "updates", "uplink", "return", "outcome", "epsilon", title="rounds", box=box.SIMPLE
    )
    for r in recent:
        table.add_row(
            str(r.round),
            _when(r.closed_at),
            str(r.n_updates),
            _size(r.uplink_bytes),
            _number(r.candidate_return),
            _outcome(r),
            _number(r.epsilon, 2),
        )
    console.print(table)
