"""examples/edge end to end, in real processes: a server that knows only the spaces, three
thermostat devices running the user's Gymnasium class from their own folder, one of them killed
with SIGKILL mid-loop, and a torch-free `fedrl act` device following the deployed version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fedrl.server.store import Store

from .test_e2e_grpc import ENV, _free_port, events, fedrl, logged

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "edge"
ROOMS = [{"loss_per_h": 0.12}, {"loss_per_h": 0.2, "heater_kw": 3.0}, {"outside_mean_c": -5.0}]
pytestmark = pytest.mark.slow


def _config(tmp_path: Path) -> Path:
    config = yaml.safe_load((EXAMPLE / "server.yaml").read_text())
    config["experiment"]["federation"].update(rounds=6, local_steps=720)
    config["rounds"].update(heartbeat_s=0.5, retry_s=0.2)
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "a") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=ENV)


def _device(tmp_path: Path, port: int, i: int, log: str) -> subprocess.Popen:
    return _start(
        fedrl(
            "client", "--server", f"127.0.0.1:{port}", "--insecure", "--name", f"room{i}",
            "--token-file", str(tmp_path / f"room{i}.token"), "--client-index", str(i),
            "--env", "thermostat:make_env", "--env-dir", str(EXAMPLE), "--env-kwargs", json.dumps(ROOMS[i]),
            "--state-dir", str(tmp_path / f"room{i}"),
        ),
        tmp_path / log,
    )  # fmt: skip


def test_three_thermostats_learn_from_acting_survive_a_kill_and_act_on_after_the_run(tmp_path):
    # Prepare: enrol three rooms; start the server and the devices
    port = _free_port()
    for i in range(3):
        subprocess.run(
            fedrl("fleet", "add-client", f"room{i}", "--state-dir", str(tmp_path / "srv"),
                  "--token-file", str(tmp_path / f"room{i}.token")),
            check=True, capture_output=True, env=ENV,
        )  # fmt: skip
    server = _start(
        fedrl("server", "--config", str(_config(tmp_path)), "--state-dir", str(tmp_path / "srv"),
              "--listen", f"127.0.0.1:{port}", "--metrics", "off", "--insecure", "--exit-when-finished"),
        tmp_path / "server.log",
    )  # fmt: skip
    devices = [_device(tmp_path, port, i, f"room{i}.log") for i in range(3)]
    try:
        # Execute: kill room1 with SIGKILL right after its first acknowledged update, then restart it
        logged(tmp_path / "room1.log", "acknowledged", devices[1], timeout=120)
        devices[1].send_signal(signal.SIGKILL)
        devices[1].wait()
        acknowledged = [e["update_id"] for e in events(tmp_path / "room1.log", "acknowledged")]
        devices[1] = _device(tmp_path, port, 1, "room1-restarted.log")
        assert server.wait(timeout=240) == 0
        time.sleep(2)  # the run is over: the devices act on
        alive = [d.poll() is None for d in devices]
        follower = subprocess.run(
            fedrl("act", "--policy", str(tmp_path / "srv"), "--env", "thermostat:make_env", "--env-dir", str(EXAMPLE),
                  "--state-dir", str(tmp_path / "act"), "--steps", "2000"),
            capture_output=True, text=True, env=ENV, timeout=120,
        )  # fmt: skip
    finally:
        for device in devices:
            if device.poll() is None:
                device.send_signal(signal.SIGTERM)
        codes = [device.wait(30) for device in devices]

    # Assert: nothing acknowledged was lost, the devices kept acting after the run and stopped cleanly
    store = Store(tmp_path / "srv")
    try:
        for update_id in acknowledged:
            assert store.find_update(update_id)[0] == "room1"
        deployed = store.latest_version()
    finally:
        store.close()
    assert deployed == 6 and alive == [True, True, True] and codes == [0, 0, 0]
    for log in ("room0.log", "room1-restarted.log", "room2.log"):
        (finished,) = events(tmp_path / log, "finished")
        assert finished["acting_version"] == deployed and finished["acting_steps"] >= 720
        assert json.loads((tmp_path / log.split(".")[0].split("-")[0] / "acting.json").read_text())["version"] == 6
    assert events(tmp_path / "room1-restarted.log", "restored")  # it acted again before reaching the server
    assert follower.returncode == 0, follower.stderr
    assert f"with version {deployed}" in follower.stdout and "acted 2000 steps" in follower.stdout
    assert os.path.exists(tmp_path / "act" / "acting.safetensors")
