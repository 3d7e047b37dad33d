"""Secure aggregation over real gRPC, in real processes: a ``fedrl server`` and five device
processes, each running its half of the protocol (``fedrl.edge.secure``) with a known input;
one is killed with SIGKILL right after it sent its masked input. The new version still moves by
exactly the mean of all five inputs (within the fixed point's step): the others' shares unmask it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fedrl.core.secagg import SecAggConfig
from fedrl.edge.grpc_link import GrpcLink
from fedrl.server.store import Store

FEDRL = [sys.executable, "-m", "fedrl.cli"]
QUIET = {**os.environ, "OMP_NUM_THREADS": "1", "GRPC_VERBOSITY": "NONE"}
NAMES = [f"dev{i}" for i in range(5)]
SECURE = SecAggConfig(enabled=True, threshold=3)
SERVER_YAML = """\
experiment:
  seed: 3
  learner: {name: ppo, hidden: [8, 8]}
  federation: {n_clients: 5, fraction: 1.0, rounds: 3, local_steps: 64, stop_at_target: false}
  pipeline: {secure_aggregation: {enabled: true, threshold: 3}}
gate: {enabled: false}
rounds: {deadline_s: 60, secure_step_s: 2, retry_s: 0.1}
"""

# One device: register, take the round's task, run the protocol with the input drawn from its
# seed, printing each step that closes; the victim then waits to be killed.
DEVICE = """
import sys, time
import numpy as np
from fedrl.core.secagg import SecAggConfig
from fedrl.edge.grpc_link import GrpcLink
from fedrl.edge.secure import run_secure_round
from fedrl.wire.records import Task

port, name, token, seed, die_after = sys.argv[1:]
link = GrpcLink(f"127.0.0.1:{port}", token, name, timeout_s=20)
link.register()
dim = link.pull(0).params.size
task = link.task()
while not isinstance(task, Task):
    time.sleep(0.1)
    task = link.task()
x = np.random.default_rng(int(seed)).uniform(-0.05, 0.05, dim).astype(np.float32)

def stepped(step, reply):
    print(step.name, flush=True)
    if step.name == die_after:
        time.sleep(3600)

run_secure_round(lambda step, payload: link.secure(task.round, step, payload), x,
                 SecAggConfig(enabled=True, threshold=3), time.sleep, stepped)
print("DONE", flush=True)
"""


@pytest.fixture
def secure_server(tmp_path):
    """A ``fedrl server`` whose experiment aggregates securely, on a free port; its port and tokens."""
    (tmp_path / "server.yaml").write_text(SERVER_YAML)
    state = tmp_path / "state"
    store = Store(state)
    tokens = {name: store.add_client(name, time.time()) for name in NAMES}
    store.close()
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [*FEDRL, "server", "--config", str(tmp_path / "server.yaml"), "--state-dir", str(state),
             "--listen", "127.0.0.1:0", "--metrics", "off", "--insecure"],
            stderr=log, env=QUIET,
        )  # fmt: skip
    info, deadline = state / "server.json", time.monotonic() + 60
    while not info.exists():
        assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
        time.sleep(0.05)
    yield json.loads(info.read_text())["port"], tokens
    server.terminate()
    server.wait(20)


def _lines_until(device: subprocess.Popen, wanted: str, timeout_s: float) -> list[str]:
    """The lines ``device`` prints up to ``wanted``, its exit (end of output) or the timeout."""
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = device.stdout.readline()
        if not line:  # end of output: the device exited
            break
        lines.append(line.strip())
        if lines[-1] == wanted:
            break
    return lines


@pytest.mark.slow
def test_five_devices_one_killed_after_masking_the_sum_is_still_exact(secure_server):
    port, tokens = secure_server
    devices = [
        subprocess.Popen(
            [sys.executable, "-c", DEVICE, str(port), name, tokens[name], str(i), "MASK" if i == 4 else "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=QUIET,
        )
        for i, name in enumerate(NAMES)
    ]
    try:
        # Execute: the victim dies once its masked input is in
        assert _lines_until(devices[4], "MASK", 120)[-1] == "MASK", devices[4].stderr.read()
        devices[4].send_signal(signal.SIGKILL)
        finished = [_lines_until(d, "DONE", 120) for d in devices[:4]]

        # Assert: every survivor finished; the new version moved by the mean of all five inputs
        assert all(lines[-1:] == ["DONE"] for lines in finished), [
            (lines, d.poll(), d.stderr.read() if d.poll() is not None else "") for lines, d in zip(finished, devices)
        ]
        link = GrpcLink(f"127.0.0.1:{port}", tokens["dev0"], "dev0")
        deadline = time.monotonic() + 30
        while link.heartbeat(None) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        before, after = link.pull(0).params, link.pull(1).params
        link.close()
        inputs = [np.random.default_rng(i).uniform(-0.05, 0.05, before.size).astype(np.float32) for i in range(5)]
        np.testing.assert_allclose(after - before, np.mean(inputs, axis=0), atol=1.0 / SECURE.scale)
    finally:
        for device in devices:
            device.kill()
            device.wait()
