"""``fedrl client``: run an edge agent on a device, connected to a ``fedrl server`` over gRPC or MQTT."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from fedrl.cli.console import fail
from fedrl.cli.mqtt import BROKER, BROKER_PASSWORD, FLEET, MQTT_VERSION, TRANSPORT, Transport, broker_options

ENV_KWARGS = typer.Option("{}", "--env-kwargs", help="JSON object of keyword arguments for --env.")
ENV_DIR = typer.Option(
    None,
    "--env-dir",
    help="Folder searched first for --env's module (default: Python's path, then the working folder).",
)
ACT_PERIOD = typer.Option(
    0.0, "--act-period", min=0.0, help="Seconds between two decisions at least (0: at the environment's pace)."
)
TOKEN_FILE = typer.Option(None, "--token-file", envvar="FEDRL_TOKEN_FILE", help="File holding this device's token.")
CERT = typer.Option(None, "--cert", help="This device's certificate (PEM), for mutual TLS.")
KEY = typer.Option(None, "--key", help="This device's private key (PEM), for mutual TLS.")
INSECURE = typer.Option(False, "--insecure", help="Plain text, for tests: loopback addresses only.")
ALLOW_CODE = typer.Option(
    [],
    "--allow-code",
    envvar="FEDRL_ALLOW_CODE",
    help="module:function of the experiment's own code that this process may run: its network or learner loss "
    "(and at a regional aggregator its robust rule); repeat for each, the module on the Python path. Nothing the "
    "server names runs without it.",
)


def _default_state_dir(name: str) -> Path:
    """``$XDG_STATE_HOME/fedrl/NAME``, by default ``~/.local/state/fedrl/NAME``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "fedrl" / name


def read_token(token: str | None, token_file: Path | None) -> str:
    """The client's token from exactly one of ``--token`` (or ``FEDRL_TOKEN``) and ``--token-file``."""
    if token and token_file:
        raise ValueError("give the token once: --token (or FEDRL_TOKEN) or --token-file, not both")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read --token-file {token_file}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"--token-file {token_file} is empty")
    if not token:
        raise ValueError("no token: give --token-file FILE (from `fedrl fleet add-client`), FEDRL_TOKEN or --token")
    return token


def parse_env_kwargs(text: str) -> dict:
    """``--env-kwargs``: a JSON object."""
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--env-kwargs is not JSON: {exc}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--env-kwargs must be a JSON object, got {type(kwargs).__name__}")
    return kwargs


def channel_credentials(server: str, ca: Path | None, cert: Path | None, key: Path | None, insecure: bool):
    """TLS credentials trusting ``ca`` (with a client certificate for mutual TLS), or None for
    plain text, which is allowed only with ``insecure`` on a loopback address."""
    from fedrl.wire import tls

    if ca is None:
        if cert is not None or key is not None:
            raise ValueError("--cert and --key need --ca (the CA that signed the server's certificate)")
        tls.ensure_plaintext_allowed(server, insecure)
        return None
    if insecure:
        raise ValueError("--insecure asks for plain text but --ca asks for TLS: give one of them")
    return tls.channel_credentials(ca, cert, key)


def _serve(runner: Any, link: Any, fatal: type[Exception]) -> None:
    """Run an agent or a follower until it ends (SIGTERM and SIGINT stop it); its ``fatal`` error is
    one line and exit status 2; the link, if any, is closed however it ends."""
    _stop_on_signals(runner.stop)
    try:
        runner.run()
    except fatal as exc:
        fail(str(exc))
    finally:
        if link is not None:
            link.close()


def _stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT stop the agent cleanly; a second one ends the process at once."""

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


PATH_KEYS = ("token_file", "env_dir", "state_dir", "ca", "cert", "key")  # relative to the device config's folder


def load_device_config(ctx: typer.Context, path: Optional[Path]) -> Optional[Path]:
    """``--device-config FILE``: a YAML mapping of this command's options (``env: thermostat:make_env``,
    ``env_kwargs: {loss_per_h: 0.2}``, ``train_nice: 10``, ...), taken as their defaults: a flag given
    on the command line wins. Paths are relative to the file's folder."""
    if path is None:
        return None
    from fedrl.experiment.config import ConfigError
    from fedrl.experiment.loading import read_yaml

    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    allowed = {p.name for p in ctx.command.params if p.name != "device_config"}
    defaults = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in allowed:
            raise typer.BadParameter(f"{path}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
        if name == "env_kwargs" and isinstance(value, dict):
            value = json.dumps(value)
        if name in PATH_KEYS and value is not None:
            value = str((path.parent / str(value)).resolve())
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def client(
    device_config: Optional[Path] = typer.Option(
        None,
        "--device-config",
        is_eager=True,
        callback=load_device_config,
        help="YAML file of this command's options (their names with '_'), e.g. env, env_kwargs, train_nice; "
        "flags on the command line win.",
    ),
    server: Optional[str] = typer.Option(
        None, "--server", envvar="FEDRL_SERVER", help="The server's gRPC address, HOST:PORT (with --transport grpc)."
    ),
    fallback: list[str] = typer.Option(
        [],
        "--fallback",
        help="Another server of the hierarchy (a region, the root) to use while --server is unreachable, HOST:PORT; "
        "repeatable, tried in order; each must know this client's token (docs/hierarchy.md).",
    ),
    return_after: float = typer.Option(
        60.0, "--return-after", min=1.0, help="Seconds on a fallback before trying --server again."
    ),
    name: str = typer.Option(
        ..., "--name", envvar="FEDRL_NAME", help="This client's name, as enrolled with `fedrl fleet add-client NAME`."
    ),
    client_index: int = typer.Option(
        0,
        "--client-index",
        envvar="FEDRL_CLIENT_INDEX",
        min=0,
        help="This device's client in the experiment: its random streams, and with a built-in family "
        "its row of physical parameters.",
    ),
    token: Optional[str] = typer.Option(
        None,
        "--token",
        envvar="FEDRL_TOKEN",
        help="The client's token; prefer --token-file or FEDRL_TOKEN (a command line is visible to other users).",
    ),
    token_file: Optional[Path] = TOKEN_FILE,
    env: Optional[str] = typer.Option(
        None,
        "--env",
        envvar="FEDRL_ENV",
        help="The environment this device acts in: 'package.module:make_env' (a factory returning a Gymnasium "
        "env), a registered Gymnasium id, or a built-in family name (simulated, for demos). "
        "Default: the experiment's built-in family.",
    ),
    env_kwargs: str = ENV_KWARGS,
    env_dir: Optional[Path] = ENV_DIR,
    act_period: float = ACT_PERIOD,
    greedy: bool = typer.Option(
        False, "--greedy", help="Act greedily (no exploration): the experience then suits DQN only."
    ),
    until_finished: bool = typer.Option(
        False, "--until-finished", help="Exit when the run is finished instead of acting on with its last version."
    ),
    train_threads: Optional[int] = typer.Option(None, "--train-threads", min=1, help="Torch threads for training."),
    train_nice: int = typer.Option(
        0, "--train-nice", min=0, max=19, help="Niceness added to the training thread only (acting keeps its priority)."
    ),
    max_rss_mb: Optional[float] = typer.Option(
        None, "--max-rss-mb", min=1.0, help="Skip a task while this process's resident memory is above this (MiB)."
    ),
    train_when: Optional[str] = typer.Option(
        None,
        "--train-when",
        help="'module:function' returning True when training may run now (on mains power, idle, a time window); "
        "looked up in --env-dir first.",
    ),
    ask_after_steps: Optional[int] = typer.Option(
        None, "--ask-after-steps", min=1, help="Ask the server for work only after acting this many steps since."
    ),
    ask_after_episodes: Optional[int] = typer.Option(
        None, "--ask-after-episodes", min=1, help="... or after finishing this many episodes since."
    ),
    ask_below_return: Optional[float] = typer.Option(
        None, "--ask-below-return", help="... or when the mean return of the last 10 episodes falls below this."
    ),
    ask_above_return: Optional[float] = typer.Option(None, "--ask-above-return", help="... or rises above this."),
    personalize_steps: int = typer.Option(
        0,
        "--personalize-steps",
        min=0,
        help="Fine-tune a personal copy of each deployed version on this many of its steps here, and act with it "
        "while it does not do worse than the global version (0: off).",
    ),
    personalize_episodes: int = typer.Option(
        5, "--personalize-episodes", min=1, help="Greedy episodes each side of the personal-vs-global comparison."
    ),
    personal_tolerance: float = typer.Option(
        0.0, "--personal-tolerance", help="Return the personal copy may lose against the global version and stay."
    ),
    state_dir: Optional[Path] = typer.Option(
        None,
        "--state-dir",
        help="Where the pending update, learner state and acting policy survive a restart "
        "(default ~/.local/state/fedrl/NAME).",
    ),
    ca: Optional[Path] = typer.Option(
        None,
        "--ca",
        envvar="FEDRL_CA",
        help="CA certificate (PEM) that signed the server's (with --transport mqtt: the broker's) certificate: "
        "connect with TLS.",
    ),
    cert: Optional[Path] = CERT,
    key: Optional[Path] = KEY,
    insecure: bool = INSECURE,
    timeout: float = typer.Option(
        60.0, "--timeout", min=1.0, help="Seconds one call (a whole model or update transfer) may take."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Also log waits and unanswered heartbeats."),
    transport: Transport = TRANSPORT,
    broker: str = BROKER,
    fleet: str = FLEET,
    broker_user: Optional[str] = typer.Option(
        None, "--broker-user", help="Broker username (default: --name, as the fleet ACL expects)."
    ),
    broker_password: Optional[str] = BROKER_PASSWORD,
    mqtt_version: str = MQTT_VERSION,
    allow_code: list[str] = ALLOW_CODE,
) -> None:
    """Run an edge agent: act in this device's environment with the deployed policy all the time,
    learn from that experience when the server asks, push the updates, and keep acting after the
    run ends; rides out server restarts and network loss. JSON log lines on stderr."""
    from fedrl.edge.agent import Agent, AgentConfig, Fatal
    from fedrl.edge.device_env import DeviceEnvSpec
    from fedrl.edge.failover import FailoverLink
    from fedrl.edge.grpc_link import GrpcLink
    from fedrl.edge.limits import OwnerLimits, Triggers
    from fedrl.edge.mqtt_link import MqttLink
    from fedrl.edge.personal import Personalization
    from fedrl.server.log import setup_logging  # the log format only: the agent itself never imports the server

    try:
        secret = read_token(token, token_file)
        spec = None if env is None else DeviceEnvSpec(env, parse_env_kwargs(env_kwargs), env_dir)
        if transport is Transport.mqtt:
            options = broker_options(
                broker, fleet, broker_user or name, broker_password, ca, cert, key, insecure, mqtt_version
            )
        elif server is None:
            raise ValueError("give --server HOST:PORT (or --transport mqtt and --broker HOST:PORT)")
        else:
            credentials = [channel_credentials(address, ca, cert, key, insecure) for address in [server, *fallback]]
        if fallback and transport is Transport.mqtt:
            raise ValueError("--fallback is for gRPC servers; with MQTT the broker is the one address")
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    setup_logging("debug" if verbose else "info")
    if transport is Transport.mqtt:
        link = MqttLink(options, secret, name, timeout)
    else:
        links = [GrpcLink(a, secret, name, c, timeout) for a, c in zip([server, *fallback], credentials)]
        link = FailoverLink(links, return_after) if fallback else links[0]
    config = AgentConfig(
        state_dir or _default_state_dir(name),
        client_index,
        spec,
        explore=not greedy,
        act_period_s=act_period,
        until_finished=until_finished,
        limits=OwnerLimits(train_threads, train_nice, max_rss_mb, train_when, env_dir),
        triggers=Triggers(ask_after_steps, ask_after_episodes, ask_below_return, ask_above_return),
        personalization=Personalization(personalize_steps, personalize_episodes, personal_tolerance),
        allow_code=tuple(allow_code),
    )
    _serve(Agent(link, config), link, Fatal)


def act(
    policy: Path = typer.Option(
        ...,
        "--policy",
        envvar="FEDRL_POLICY",
        help="The policy to act with: an exported artifact (.npz, .safetensors with its card), or a run or state dir.",
    ),
    env: str = typer.Option(
        ...,
        "--env",
        envvar="FEDRL_ENV",
        help="The environment this device acts in: 'package.module:make_env' (a factory), or a Gymnasium id.",
    ),
    env_kwargs: str = ENV_KWARGS,
    env_dir: Optional[Path] = ENV_DIR,
    state_dir: Path = typer.Option(
        ..., "--state-dir", help="Where the acting version is kept, so a reboot acts with it again."
    ),
    server: Optional[str] = typer.Option(
        None,
        "--server",
        envvar="FEDRL_SERVER",
        help="Follow this server's deployed version (gRPC HOST:PORT); without it, act offline.",
    ),
    name: Optional[str] = typer.Option(
        None, "--name", envvar="FEDRL_NAME", help="This device's enrolled name (with --server or MQTT)."
    ),
    token_file: Optional[Path] = TOKEN_FILE,
    ca: Optional[Path] = typer.Option(
        None, "--ca", envvar="FEDRL_CA", help="CA certificate (PEM) of the server's (or broker's) one."
    ),
    cert: Optional[Path] = CERT,
    key: Optional[Path] = KEY,
    insecure: bool = INSECURE,
    heartbeat: float = typer.Option(10.0, "--heartbeat", min=0.01, help="Seconds between asks for a new version."),
    act_period: float = ACT_PERIOD,
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Stop after this many decisions."),
    transport: Transport = TRANSPORT,
    broker: str = BROKER,
    fleet: str = FLEET,
    broker_password: Optional[str] = BROKER_PASSWORD,
    mqtt_version: str = MQTT_VERSION,
    allow_code: list[str] = ALLOW_CODE,
) -> None:
    """Act with a policy without torch (numpy only) and, given a server or broker, hot-swap each
    newly deployed version between two decisions. JSON log lines on stderr; a summary at the end."""
    from fedrl.edge.device import Fatal
    from fedrl.edge.inference import Follower, make_env
    from fedrl.policy import load_policy
    from fedrl.policy.usercode import only_code
    from fedrl.server.log import setup_logging  # the log format only

    with only_code(allow_code):
        try:
            loaded = load_policy(policy)
            link = None
            if server is not None or transport is Transport.mqtt:
                if name is None:
                    raise ValueError("--name is needed to follow a server")
                secret = read_token(None, token_file)
                if transport is Transport.mqtt:
                    from fedrl.edge.mqtt_link import MqttLink

                    options = broker_options(
                        broker, fleet, name, broker_password, ca, cert, key, insecure, mqtt_version
                    )
                    link = MqttLink(options, secret, name, 30.0)
                else:
                    from fedrl.edge.grpc_link import GrpcLink

                    link = GrpcLink(server, secret, name, channel_credentials(server, ca, cert, key, insecure), 30.0)
            environment = make_env(env, parse_env_kwargs(env_kwargs), env_dir)
            follower = Follower(
                loaded, environment, state_dir, link, heartbeat_s=heartbeat, act_period_s=act_period, max_steps=steps
            )
        except (ValueError, FileNotFoundError, Fatal) as exc:
            fail(str(exc))
        setup_logging("info")
        _serve(follower, link, Fatal)
        actor = follower.actor
        latency = actor.latency_us()
        returns = list(actor.returns)
        mean = f"{np.mean(returns):.2f}" if returns else "n/a"
        print(
            f"acted {actor.steps} steps, {actor.episodes} episodes (mean return {mean}) with version "
            f"{follower.acting.version}; decision latency p50 {latency['p50']:.1f} us, p99 {latency['p99']:.1f} us"
        )
