"""A deployed fleet over MQTT, all real processes: Mosquitto, ``fedrl server --transport mqtt``
and ``fedrl client --transport mqtt`` devices, each in its own process group, all stopped after
the test whatever happens. The server runs FedBuff, the MQTT default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedrl.server.store import Store

pytestmark = pytest.mark.slow
FLEET = "e2e"


def server_yaml(target: float, rounds: int, stop_at_target: bool) -> str:
    """Five heterogeneous CartPoles learning with PPO and FedBuff: devices that sleep submit when they can."""
    return (
        "experiment:\n"
        "  name: cartpole-mqtt\n"
        "  seed: 1\n"
        "  env: {family: cartpole, heterogeneity: 0.5}\n"
        "  learner: {name: ppo, lr: 0.0025, n_envs: 8, n_steps: 64, epochs: 4, minibatches: 4, hidden: [32, 32]}\n"
        "  strategy: {name: fedbuff, buffer_size: 2}\n"
        f"  federation: {{n_clients: 5, rounds: {rounds}, local_steps: 1024, target_return: {target},"
        f" stop_at_target: {str(stop_at_target).lower()}}}\n"
        "rounds: {retry_s: 0.5, heartbeat_s: 1.0, max_staleness: 20}\n"
        "gate: {heldout_clients: 4, episodes: 2, relative_tolerance: 0.2}\n"
    )


@dataclass
class Deployment:
    """What a test started: the broker, the server's state, and each process by name."""

    root: Path
    broker: object
    processes: dict[str, subprocess.Popen]

    @property
    def state_dir(self) -> Path:
        return self.root / "server-state"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def events(self, name: str, event: str) -> list[dict]:
        lines = self.log(name).read_text().splitlines()
        return [entry for entry in map(_json, lines) if entry.get("event") == event]

    def deployed(self) -> tuple[int, float | None]:
        """The deployed version and its gate return, read from the server's store (-1 before it starts)."""
        store = Store(self.state_dir)
        try:
            version = store.latest_version()
            return (-1, None) if version is None else (version, store.load_version(version)[0].eval_return)
        finally:
            store.close()

    def wait(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what} did not happen within {timeout_s} s; server log:\n"
                    + self.log("server").read_text()[-3000:]
                )
            time.sleep(0.2)


def _json(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        return {}


def _start(deployment: Deployment, name: str, args: list[str], password: str) -> None:
    env = {**os.environ, "FEDRL_BROKER_PASSWORD": password, "OMP_NUM_THREADS": "1"}
    with open(deployment.log(name), "wb") as log:
        deployment.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "fedrl.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def deploy(tmp_path, start_broker):
    """Start a broker, ``fedrl server --transport mqtt`` and ``n`` devices; everything stopped after the test."""
    started: list[Deployment] = []

    def deploy(yaml_text: str, n: int = 5, spare: tuple[str, ...] = ()) -> Deployment:
        """``spare`` names are enrolled (server token in ``NAME.token``, broker login) but not started."""
        names = [f"dev-{i}" for i in range(n)]
        passwords = {"fedrl-server": "server-secret", **{name: f"{name}-secret" for name in (*names, *spare)}}
        broker = start_broker(users=passwords, max_packet_bytes=4096)  # models and updates (10 kB) go in chunks
        deployment = Deployment(tmp_path, broker, {})
        started.append(deployment)
        store = Store(deployment.state_dir)
        tokens = {name: store.add_client(name, time.time()) for name in (*names, *spare)}
        store.close()
        for name in spare:
            (tmp_path / f"{name}.token").write_text(tokens[name])
        (tmp_path / "server.yaml").write_text(yaml_text)
        common = ["--transport", "mqtt", "--broker", f"127.0.0.1:{broker.port}", "--fleet", FLEET, "--insecure"]
        _start(
            deployment,
            "server",
            [
                "server",
                "--config",
                str(tmp_path / "server.yaml"),
                "--state-dir",
                str(deployment.state_dir),
                "--metrics",
                "off",
                "--exit-when-finished",
                "--broker-user",
                "fedrl-server",
                *common,
            ],
            passwords["fedrl-server"],
        )
        # the server's first session must exist before devices ask: a request with no subscriber is dropped
        deployment.wait(lambda: deployment.events("server", "model_announced"), 60, "the server's first announcement")
        for i, name in enumerate(names):
            (tmp_path / f"{name}.token").write_text(tokens[name])
            _start(
                deployment,
                name,
                [
                    "client",
                    "--name",
                    name,
                    "--client-index",
                    str(i),
                    "--token-file",
                    str(tmp_path / f"{name}.token"),
                    "--state-dir",
                    str(tmp_path / name),
                    "--timeout",
                    "20",
                    "--until-finished",
                    "--act-period",
                    "0.001",  # a device's pace: unpaced, simulated devices would fight for two cores
                    *common,
                ],
                passwords[name],
            )
        return deployment

    yield deploy
    for deployment in started:
        for process in reversed(deployment.processes.values()):  # devices first: a server that is gone answers no one
            _stop(process)


def test_five_devices_train_cartpole_to_the_target_through_a_broker_restart(deploy):
    # Prepare
    target = 475.0  # CartPole solved: the family default
    fleet = deploy(server_yaml(target, rounds=200, stop_at_target=True))

    # Execute: restart the broker once training is under way
    fleet.wait(lambda: fleet.deployed()[0] >= 2, 120, "version 2")
    fleet.broker.restart()
    exit_codes = {name: process.wait(240) for name, process in fleet.processes.items()}

    # Assert: the server stopped at the target, every device heard the run was over
    _version, score = fleet.deployed()
    assert exit_codes == dict.fromkeys(fleet.processes, 0), fleet.log("server").read_text()[-3000:]
    assert score is not None and score >= target
    assert fleet.events("server", "broker_disconnected") and len(fleet.events("server", "broker_connected")) >= 2
    for name in fleet.processes:
        if name != "server":
            assert fleet.events(name, "finished"), fleet.log(name).read_text()[-2000:]


def test_a_suspended_device_is_seen_offline_and_catches_up(deploy):
    # Prepare
    fleet = deploy(server_yaml(target=500.0, rounds=1000, stop_at_target=False), n=3)
    sleeper = fleet.processes["dev-2"]
    fleet.wait(lambda: fleet.events("dev-2", "acknowledged"), 120, "a first update from dev-2")

    # Execute: suspend dev-2 until its will fires and the others have moved the model on
    os.killpg(sleeper.pid, signal.SIGSTOP)
    suspended_at = fleet.deployed()[0]
    fleet.wait(
        lambda: any(e["client"] == "dev-2" for e in fleet.events("server", "client_offline")), 60, "dev-2 offline"
    )
    fleet.wait(lambda: fleet.deployed()[0] >= suspended_at + 3, 120, "three versions without dev-2")
    resumed_at = fleet.deployed()[0]
    os.killpg(sleeper.pid, signal.SIGCONT)

    # Assert: back online, it trains from a version deployed after it woke and acts with a new one
    fleet.wait(
        lambda: [e["client"] for e in fleet.events("server", "client_online")].count("dev-2") >= 2,
        60,
        "dev-2 online again",
    )
    fleet.wait(
        lambda: any(e["base_version"] >= resumed_at for e in fleet.events("dev-2", "trained")),
        120,
        "dev-2 training from a fresh version",
    )
    fleet.wait(
        lambda: any(e["version"] >= resumed_at for e in fleet.events("dev-2", "acting")),
        60,
        "dev-2 acting with a fresh version",
    )
    fleet.wait(lambda: len(fleet.events("dev-2", "acknowledged")) >= 2, 60, "an update from dev-2 after waking")


def test_a_torch_free_device_follows_the_deployed_version_through_the_broker(deploy):
    # Prepare: a fleet learning through the broker, and a device that only acts, enrolled as act-0
    fleet = deploy(server_yaml(target=500.0, rounds=1000, stop_at_target=False), n=2, spare=("act-0",))
    fleet.wait(lambda: fleet.deployed()[0] >= 0, 60, "version 0")
    common = ["--transport", "mqtt", "--broker", f"127.0.0.1:{fleet.broker.port}", "--fleet", FLEET, "--insecure"]

    # Execute: `fedrl act` starts from the server's version 0 and follows what is deployed
    _start(
        fleet,
        "act-0",
        ["act", "--policy", str(fleet.state_dir), "--env", "CartPole-v1", "--state-dir", str(fleet.root / "act-0"),
         "--name", "act-0", "--token-file", str(fleet.root / "act-0.token"), "--heartbeat", "0.5", *common],
        "act-0-secret",
    )  # fmt: skip

    # Assert: it swaps in newer versions as the fleet makes them
    fleet.wait(lambda: any(e["version"] >= 2 for e in fleet.events("act-0", "acting")), 180, "act-0 acting with v2")
    assert fleet.processes["act-0"].poll() is None
