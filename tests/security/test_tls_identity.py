"""A device facing a server it cannot verify stops at once, with one line and exit 2: a
certificate from another CA is a wrong setting, not a network that will come back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fedrl.server.store import Store
from fedrl.wire.tls import write_dev_pki

FEDRL = [sys.executable, "-m", "fedrl.cli"]
QUIET = {**os.environ, "OMP_NUM_THREADS": "1", "GRPC_VERBOSITY": "NONE"}


@pytest.fixture
def tls_server(tmp_path):
    """A ``fedrl server`` with TLS from CA ``pki-a`` on a free loopback port, and a client's token."""
    write_dev_pki(tmp_path / "pki-a")
    state = tmp_path / "state"
    store = Store(state)
    (tmp_path / "dev0.token").write_text(store.add_client("dev0", time.time()) + "\n")
    store.close()
    pki = tmp_path / "pki-a"
    server = subprocess.Popen(
        [*FEDRL, "server", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--metrics", "off",
         "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")],
        stderr=subprocess.DEVNULL, env=QUIET,
    )  # fmt: skip
    info, deadline = state / "server.json", time.monotonic() + 60
    while not info.exists():
        assert server.poll() is None and time.monotonic() < deadline, "fedrl server did not start"
        time.sleep(0.05)
    yield json.loads(info.read_text())["port"]
    server.terminate()
    server.wait(20)


@pytest.mark.slow
def test_an_agent_given_another_ca_stops_with_one_line_and_exit_2(tmp_path, tls_server):
    # Prepare: the device was given the CA of another PKI
    write_dev_pki(tmp_path / "pki-b")

    # Execute
    started = time.monotonic()
    client = subprocess.run(
        [*FEDRL, "client", "--server", f"127.0.0.1:{tls_server}", "--ca", str(tmp_path / "pki-b" / "ca.pem"),
         "--name", "dev0", "--token-file", str(tmp_path / "dev0.token"), "--client-index", "0",
         "--env", "cartpole", "--state-dir", str(tmp_path / "dev0")],
        capture_output=True, text=True, env=QUIET, timeout=60,
    )  # fmt: skip

    # Assert: no retrying, and a message that says what to change
    assert client.returncode == 2, client.stderr
    assert time.monotonic() - started < 30
    errors = [line for line in (client.stdout + client.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "certificate failed verification" in errors[0] and "--ca" in errors[0]
