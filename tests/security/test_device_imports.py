"""A server never makes a device import code, and a device whose environment does not fit is refused,
in real processes: a `fedrl server` whose experiment names a Gymnasium setter module of its own,
and `fedrl client` devices."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from ..edge.test_e2e_grpc import ENV, _free_port, events, fedrl

pytestmark = pytest.mark.slow

SETTER = """
import os, pathlib
pathlib.Path(__file__).with_name(f"imported-by-{os.getpid()}").write_text("ran")


def setter(env, row):
    env.length = row["length"]
"""


@pytest.fixture
def gym_server(tmp_path):
    """A server training CartPole-v1 through the adapter, with a setter module in its own folder."""
    (tmp_path / "hostile_setter.py").write_text(SETTER)
    config = {
        "experiment": {
            "seed": 1,
            "env": {
                "family": "gym",
                "gym": {
                    "id": "CartPole-v1",
                    "setter": "hostile_setter:setter",
                    "setter_dir": str(tmp_path),
                    "params": {"length": {"standard": 0.5, "low": 0.4, "high": 0.6}},
                },
            },
            "learner": {"name": "ppo", "hidden": [16, 16]},
            "federation": {"n_clients": 1, "rounds": 2, "local_steps": 256},
        },
        "rounds": {"deadline_s": 60, "heartbeat_s": 0.5, "retry_s": 0.2, "min_updates": 1},
        "gate": {"enabled": False},
    }
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(config))
    subprocess.run(
        fedrl("fleet", "add-client", "dev0", "--state-dir", str(tmp_path / "srv"), "--token-file", str(tmp_path / "t")),
        check=True, capture_output=True, env=ENV,
    )  # fmt: skip
    port = _free_port()
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            fedrl("server", "--config", str(tmp_path / "server.yaml"), "--state-dir", str(tmp_path / "srv"),
                  "--listen", f"127.0.0.1:{port}", "--metrics", "off", "--insecure", "--exit-when-finished"),
            stdout=log, stderr=subprocess.STDOUT, env=ENV,
        )  # fmt: skip
    yield port, tmp_path
    server.terminate()
    server.wait(20)


def _device(port: int, root: Path, env: str) -> subprocess.Popen:
    return subprocess.Popen(
        fedrl("client", "--server", f"127.0.0.1:{port}", "--insecure", "--name", "dev0", "--token-file",
              str(root / "t"), "--env", env, "--state-dir", str(root / "dev0"), "--until-finished",
              "--act-period", "0.001"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip


def test_a_device_trains_a_setter_experiment_without_importing_the_setter(gym_server):
    port, root = gym_server

    device = _device(port, root, "CartPole-v1")
    try:
        _, stderr = device.communicate(timeout=240)
    finally:
        device.kill()  # never left running, whatever happened

    assert device.returncode == 0, stderr[-2000:]
    imported_by = {p.name for p in root.glob("imported-by-*")}
    assert f"imported-by-{device.pid}" not in imported_by  # the server imported it; the device never did
    received = yaml.safe_load((root / "dev0" / "experiment.yaml").read_text())
    assert received["env"]["family"] == "device" and received["env"]["gym"] is None
    assert received["env"]["device"]["obs_dim"] == 4 and received["env"]["device"]["discrete"] == 2
    log = root / "device.log"
    log.write_text(stderr)
    assert events(log, "acknowledged")


def test_a_device_whose_environment_does_not_fit_stops_naming_both_sides(gym_server):
    port, root = gym_server

    device = _device(port, root, "Pendulum-v1")
    try:
        stdout, _ = device.communicate(timeout=120)
    finally:
        device.kill()

    assert device.returncode == 2
    assert (
        "error: --env Pendulum-v1: the experiment trains obs (4,), 2 discrete actions; this device's environment "
        "has obs (3,), 1 continuous action in [-2, 2]" in " ".join(stdout.split())
    )
