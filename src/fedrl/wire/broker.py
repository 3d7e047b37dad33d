"""A Mosquitto broker on a free loopback port, from a config written here: for tests, demos and benchmarks.

``Mosquitto(folder, ...).start()`` writes ``mosquitto.conf``, a password file (hashed by
``mosquitto_passwd``), the fleet ACL (``acl_text``, the same as ``examples/mosquitto/acl``) and,
when asked, TLS settings into ``folder``, and runs Debian's ``mosquitto`` in a process group of
its own. Persistence is on, so ``restart`` keeps sessions, their queued messages and retained
messages, as a production broker does. ``stop`` ends it; use it as a context manager so it is
stopped whatever happens.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

STOP_WAIT_S = 5.0


def acl_text(server_user: str) -> str:
    """The ACL that keeps each device to its own topics; a device's broker username is its client name."""
    return (
        "# fedrl fleets: every device may use its own topics only (its broker username is its fedrl\n"
        "# client name, %u); the server, logged in as the user below, may use all of them.\n"
        "pattern write fedrl/+/clients/%u/up\n"
        "pattern write fedrl/+/clients/%u/status\n"
        "pattern read fedrl/+/clients/%u/down\n"
        "pattern read fedrl/+/model\n"
        "\n"
        f"user {server_user}\n"
        "topic readwrite fedrl/#\n"
    )


@dataclass(frozen=True)
class BrokerTls:
    """TLS on the broker's listener; with ``require_certificate`` a client logs in by certificate
    (its common name becomes its username)."""

    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = False


def _free_port() -> int:
    """A TCP port nobody listens on at the moment, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{name} is not installed: `make mosquitto` (Debian package 'mosquitto')")
    return found


@dataclass
class Mosquitto:
    """One local broker; see the module docstring."""

    folder: Path
    users: Mapping[str, str]  # username -> password; empty: anonymous clients allowed
    acl_server_user: str | None = None  # write the fleet ACL with this server user; None: no ACL
    tls: BrokerTls | None = None
    max_packet_bytes: int | None = None  # the broker's packet limit, announced in CONNACK
    bind_client_ids: bool = False  # each login's client id is its username: no one can take another's session
    port: int = 0  # 0: a free port, chosen by start()
    process: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        """The config file the broker runs with."""
        return self.folder / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """The broker's own log."""
        return self.folder / "mosquitto.log"

    def _write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "data").mkdir(exist_ok=True)
        lines = [
            "per_listener_settings false",
            "persistence true",
            f"persistence_location {self.folder / 'data'}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "set_tcp_nodelay true",
            f"user {getpass.getuser()}",  # as root, stay root (mosquitto would switch user)
            f"allow_anonymous {'false' if self.users or (self.tls and self.tls.require_certificate) else 'true'}",
        ]
        if self.users:
            self._write_passwords()
            lines.append(f"password_file {self.folder / 'passwd'}")
        if self.acl_server_user is not None:
            (self.folder / "acl").write_text(acl_text(self.acl_server_user))
            lines.append(f"acl_file {self.folder / 'acl'}")
        if self.max_packet_bytes is not None:
            lines.append(f"max_packet_size {self.max_packet_bytes}")
        lines.append(f"listener {self.port} 127.0.0.1")
        if self.bind_client_ids:  # a listener's setting: after its listener line
            lines.append("use_username_as_clientid true")
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}"]
            if self.tls.require_certificate:
                lines += ["require_certificate true", "use_identity_as_username true"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _write_passwords(self) -> None:
        path = self.folder / "passwd"
        path.write_text("".join(f"{user}:{password}\n" for user, password in self.users.items()))
        os.chmod(path, 0o600)
        subprocess.run([_program("mosquitto_passwd"), "-U", str(path)], check=True, capture_output=True)

    def start(self) -> Mosquitto:
        """Write the config (first time only) and run the broker; returns once it accepts connections."""
        if self.port == 0:
            self.port = _free_port()
            self._write_config()
        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                [_program("mosquitto"), "-c", str(self.config_path)],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.process.returncode}:\n{self.log_path.read_text()[-2000:]}"
                )
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s; see {self.log_path}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves its persistence file), killing it if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port, with the sessions and retained messages it saved."""
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
