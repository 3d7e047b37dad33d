"""A real hierarchy on one machine: a root `fedrl server`, two `fedrl aggregator` processes and four
`fedrl client` processes over gRPC; one region is killed with SIGKILL in the middle of a round and
restarted while its devices fail over to the root.

What must hold (docs/hierarchy.md): the run finishes; every update a region acknowledged is in the
one update it forwarded for that round, or the round was dropped as a whole and said so; no device
is counted twice in a round, wherever its update went.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedrl.wire.broker import Mosquitto

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ROUNDS = 4
REGIONS = {"ra": [0, 1], "rb": [2, 3]}
FAST = ["--set", "rounds.heartbeat_s=0.5", "--set", "rounds.retry_s=0.2", "--set", "rounds.liveness_s=60"]
FAST += ["--set", "rounds.long_poll_s=1"]  # well inside the devices' --timeout: a long poll is not a dead server


def fedrl(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedrl.cli", *args]


def events(log: Path, name: str) -> list[dict]:
    """The JSON log lines of event ``name``."""
    found = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == name:
            found.append(entry)
    return found


def eventually(condition, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(db: Path, query: str) -> list[tuple]:
    """Rows of ``query`` on a state directory's database, read-only."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return connection.execute(query).fetchall()


class Hierarchy:
    """State directories with enrolled regions and devices, and the processes started on them."""

    def __init__(self, root: Path) -> None:
        self.root, self.processes = root, []
        self.ports = {name: free_port() for name in ["root", *REGIONS]}
        experiment = {
            "name": "hierarchy",
            "seed": 1,
            "env": {"family": "cartpole", "heterogeneity": 0.5},
            "learner": {"name": "ppo", "n_envs": 4, "n_steps": 64, "lr": 0.005, "hidden": [32, 32]},
            "federation": {"n_clients": 4, "regions": 2, "local_steps": 512, "rounds": ROUNDS, "stop_at_target": False},
        }
        config = {"experiment": experiment, "rounds": {"deadline_s": 30}, "gate": {"enabled": False}}
        (root / "root.yaml").write_text(yaml.safe_dump(config))
        at = lambda name: str(root / name)  # noqa: E731
        for region, devices in REGIONS.items():
            self.fleet(
                "add-region", region, "--devices", "2", "--state-dir", at("root"), "--token-file", at(f"{region}.token")
            )
            for i in devices:
                self.fleet("add-client", f"c{i}", "--state-dir", at(region), "--token-file", at(f"c{i}.token"))
                self.fleet("add-client", f"c{i}", "--state-dir", at("root"), "--same-token", at(f"c{i}.token"))

    @staticmethod
    def fleet(*args: str) -> None:
        subprocess.run(fedrl("fleet", *args), check=True, capture_output=True, env=ENV)

    def start(self, command: list[str], log: str) -> subprocess.Popen:
        with open(self.root / log, "a") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=ENV)
        self.processes.append(process)
        return process

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def start_root(self) -> subprocess.Popen:
        args = ["--config", str(self.root / "root.yaml"), "--state-dir", str(self.root / "root"), *FAST]
        listen = ["--listen", self.address("root"), "--metrics", "off", "--insecure", "--exit-when-finished"]
        return self.start(fedrl("server", *args, *listen), "root.log")

    def start_region(self, name: str) -> subprocess.Popen:
        parent = ["--parent", self.address("root"), "--name", name, "--token-file", str(self.root / f"{name}.token")]
        listen = ["--listen", self.address(name), "--metrics", "off", "--insecure", "--exit-when-finished"]
        return self.start(
            fedrl("aggregator", *parent, "--state-dir", str(self.root / name), *listen, *FAST), f"{name}.log"
        )

    def start_device(self, i: int) -> subprocess.Popen:
        region = next(r for r, devices in REGIONS.items() if i in devices)
        servers = ["--server", self.address(region), "--fallback", self.address("root"), "--return-after", "10"]
        identity = ["--name", f"c{i}", "--client-index", str(i), "--token-file", str(self.root / f"c{i}.token")]
        pace = ["--env", "cartpole", "--act-period", "0.001", "--timeout", "5", "--until-finished", "--insecure"]
        state = ["--state-dir", str(self.root / f"device{i}")]
        return self.start(fedrl("client", *servers, *identity, *pace, *state), f"c{i}.log")

    def stop_all(self) -> None:
        stop_all(self.processes)


def stop_all(processes: list[subprocess.Popen]) -> None:
    """Terminate the processes still running; kill those that do not end within 20 s."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ended_cleanly(process: subprocess.Popen, logs: Path, timeout: float) -> bool:
    """Whether ``process`` exited with 0 within ``timeout``; when it is still running, fail the test
    with the last lines of every log in ``logs`` (what each tier and device was doing)."""
    try:
        return process.wait(timeout=timeout) == 0
    except subprocess.TimeoutExpired:
        tails = {log.name: log.read_text().splitlines()[-15:] for log in sorted(logs.glob("*.log"))}
        pytest.fail(f"{process.args[3:6]} still running after {timeout} s; logs:\n" + json.dumps(tails, indent=1))


@pytest.fixture
def hierarchy(tmp_path):
    made = Hierarchy(tmp_path)
    yield made
    made.stop_all()


def test_a_region_killed_mid_round_loses_nothing_it_acknowledged_and_counts_no_device_twice(hierarchy):
    # Prepare: the root, both regions (up once they log so) and their devices
    root = hierarchy.start_root()
    regions = {name: hierarchy.start_region(name) for name in REGIONS}
    for name in REGIONS:
        assert eventually(lambda name=name: events(hierarchy.root / f"{name}.log", "region_started"), timeout=60)
    devices = [hierarchy.start_device(i) for i in range(4)]

    # Execute: kill region ra the moment it has acknowledged a round-2 update, then restart it
    ra_db = hierarchy.root / "ra" / "server.db"
    in_round_2 = lambda: rows(ra_db, "SELECT update_id FROM updates WHERE round = 2")  # noqa: E731
    assert eventually(in_round_2, timeout=240), "no round-2 update reached ra"
    regions["ra"].kill()
    regions["ra"].wait()
    acked_before_kill = {u for (u,) in in_round_2()}
    time.sleep(3)  # its devices fail over to the root meanwhile
    regions["ra"] = hierarchy.start_region("ra")

    # Assert: every process ends cleanly with the run
    for process in [*devices, *regions.values(), root]:
        assert ended_cleanly(process, hierarchy.root, timeout=300)
    failed_over = [e for i in REGIONS["ra"] for e in events(hierarchy.root / f"c{i}.log", "unreachable")]
    assert failed_over, "no device of the killed region noticed"
    root_db = hierarchy.root / "root" / "server.db"
    assert rows(root_db, "SELECT MAX(version) FROM versions") == [(ROUNDS,)]

    # every update a region acknowledged (the killed one's too) is in what it forwarded for its round
    forwarded = {u: (steps, n) for u, steps, n in rows(root_db, "SELECT update_id, env_steps, clients FROM updates")}
    for region in REGIONS:
        kept = rows(hierarchy.root / region / "server.db", "SELECT update_id, round, env_steps FROM updates")
        for round_ in {r for _, r, _ in kept}:
            mine = [(u, steps) for u, r, steps in kept if r == round_]
            assert forwarded[f"{region}.round{round_}"] == (sum(s for _, s in mine), len(mine))
        if region == "ra":
            assert acked_before_kill <= {u for u, r, _ in kept if r == 2}

    # a device is counted once a round: by its region, or by the root directly (after failing over)
    counted = rows(root_db, "SELECT client, round FROM updates") + [
        row
        for region in REGIONS
        for row in rows(hierarchy.root / region / "server.db", "SELECT client, round FROM updates")
    ]
    devices_counted = [(c, r) for c, r in counted if c not in REGIONS]
    assert len(devices_counted) == len(set(devices_counted))
    # and each device acts with the final version
    for i in range(4):
        assert json.loads((hierarchy.root / f"device{i}" / "acting.json").read_text())["version"] == ROUNDS


def one_region_root(path: Path, name: str, n_clients: int) -> None:
    """A root's config at ``path``: three rounds of a hierarchy whose rounds take one region's update."""
    experiment = {
        "name": name,
        "seed": 1,
        "env": {"family": "cartpole", "heterogeneity": 0.5},
        "learner": {"name": "ppo", "n_envs": 4, "n_steps": 64, "hidden": [32, 32]},
        "federation": {"n_clients": n_clients, "regions": 2, "local_steps": 512, "rounds": 3, "stop_at_target": False},
    }
    config = {
        "experiment": experiment,
        "rounds": {"deadline_s": 30, "updates_per_round": 1},
        "gate": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(config))


def test_a_region_serves_its_devices_through_an_mqtt_broker(tmp_path):
    # Prepare: a root over gRPC with one region, which serves two devices through Mosquitto
    root_dir = tmp_path / "root"
    passwords = {"fedrl-region": "region-secret", "dev-0": "dev-0-secret", "dev-1": "dev-1-secret"}
    broker = Mosquitto(tmp_path / "broker", passwords, acl_server_user="fedrl-region", max_packet_bytes=65536).start()
    processes: list[subprocess.Popen] = []
    try:
        one_region_root(tmp_path / "root.yaml", "mqtt-region", n_clients=4)
        token = tmp_path / "ra.token"
        Hierarchy.fleet("add-region", "ra", "--devices", "2", "--state-dir", str(root_dir), "--token-file", str(token))
        for i in (0, 1):
            Hierarchy.fleet(
                "add-client",
                f"dev-{i}",
                "--state-dir",
                str(tmp_path / "ra"),
                "--token-file",
                str(tmp_path / f"dev-{i}.token"),
            )
        port = free_port()

        def start(args: list[str], log: str, password: str | None = None) -> subprocess.Popen:
            env = {**ENV, "FEDRL_BROKER_PASSWORD": password} if password else ENV
            with open(tmp_path / log, "a") as output:
                processes.append(subprocess.Popen(fedrl(*args), stdout=output, stderr=subprocess.STDOUT, env=env))
            return processes[-1]

        mqtt = ["--transport", "mqtt", "--broker", f"127.0.0.1:{broker.port}", "--fleet", "hier", "--insecure"]
        root = start(
            [
                "server",
                "--config",
                str(tmp_path / "root.yaml"),
                "--state-dir",
                str(root_dir),
                *FAST,
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics",
                "off",
                "--insecure",
                "--exit-when-finished",
            ],
            "root.log",
        )
        region = start(
            [
                "aggregator",
                "--parent",
                f"127.0.0.1:{port}",
                "--name",
                "ra",
                "--token-file",
                str(token),
                "--state-dir",
                str(tmp_path / "ra"),
                "--metrics",
                "off",
                "--exit-when-finished",
                "--broker-user",
                "fedrl-region",
                *FAST,
                *mqtt,
            ],
            "ra.log",
            passwords["fedrl-region"],
        )
        assert eventually(lambda: events(tmp_path / "ra.log", "model_announced"), timeout=60), "the region never served"
        device = ["--timeout", "20", "--until-finished", "--act-period", "0.001", *mqtt]
        devices = [
            start(
                ["client", "--name", f"dev-{i}", "--client-index", str(i), "--state-dir", str(tmp_path / f"device{i}"),
                 "--token-file", str(tmp_path / f"dev-{i}.token"), *device],
                f"dev-{i}.log",
                passwords[f"dev-{i}"],
            )
            for i in (0, 1)
        ]  # fmt: skip

        # Execute and assert: the run ends for everyone; each round's one update, of both devices, came from the region
        for process in [*devices, region, root]:
            assert ended_cleanly(process, tmp_path, timeout=240)
        assert rows(root_dir / "server.db", "SELECT update_id, clients FROM updates ORDER BY round") == [
            (f"ra.round{r}", 2) for r in (1, 2, 3)
        ]
        for i in (0, 1):
            assert json.loads((tmp_path / f"device{i}" / "acting.json").read_text())["version"] == 3
    finally:
        stop_all(processes)
        broker.stop()


def test_a_region_of_regions_forwards_what_the_region_below_it_reduced(tmp_path):
    # Prepare: root <- mid <- leaf <- two devices, every tier its own process over gRPC
    one_region_root(tmp_path / "root.yaml", "three-tiers", n_clients=2)
    at = lambda name: str(tmp_path / name)  # noqa: E731
    Hierarchy.fleet("add-region", "mid", "--devices", "2", "--state-dir", at("root"), "--token-file", at("mid.token"))
    Hierarchy.fleet("add-region", "leaf", "--devices", "2", "--state-dir", at("mid"), "--token-file", at("leaf.token"))
    for i in (0, 1):
        Hierarchy.fleet("add-client", f"c{i}", "--state-dir", at("leaf"), "--token-file", at(f"c{i}.token"))
    ports = {name: free_port() for name in ("root", "mid", "leaf")}
    processes: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> subprocess.Popen:
        with open(tmp_path / log, "a") as output:
            processes.append(subprocess.Popen(fedrl(*args), stdout=output, stderr=subprocess.STDOUT, env=ENV))
        return processes[-1]

    def aggregator(name: str, parent: str, wanted: int) -> subprocess.Popen:
        tier = ["--parent", f"127.0.0.1:{ports[parent]}", "--name", name, "--token-file", at(f"{name}.token")]
        serve = ["--state-dir", at(name), "--listen", f"127.0.0.1:{ports[name]}", "--metrics", "off", "--insecure"]
        wait_for = ["--set", f"rounds.updates_per_round={wanted}", "--exit-when-finished", *FAST]
        return start(["aggregator", *tier, *serve, *wait_for], f"{name}.log")

    try:
        root = start(
            ["server", "--config", at("root.yaml"), "--state-dir", at("root"), "--listen", f"127.0.0.1:{ports['root']}",
             "--metrics", "off", "--insecure", "--exit-when-finished", *FAST],
            "root.log",
        )  # fmt: skip
        tiers = [aggregator("mid", "root", 1), aggregator("leaf", "mid", 2)]
        devices = [
            start(
                ["client", "--server", f"127.0.0.1:{ports['leaf']}", "--name", f"c{i}", "--client-index", str(i),
                 "--token-file", at(f"c{i}.token"), "--env", "cartpole", "--act-period", "0.001", "--timeout", "5",
                 "--until-finished", "--insecure", "--state-dir", at(f"device{i}")],
                f"c{i}.log",
            )
            for i in (0, 1)
        ]  # fmt: skip

        # Execute and assert: the run ends at every tier; each round the root took mid's one update,
        # which stood for the devices (and their steps) that leaf reduced, and every device acts with
        # the final version
        for process in [*devices, *reversed(tiers), root]:
            assert ended_cleanly(process, tmp_path, timeout=240)
        query = "SELECT round, clients, env_steps FROM updates ORDER BY round"
        at_root, at_mid = rows(tmp_path / "root" / "server.db", query), rows(tmp_path / "mid" / "server.db", query)
        at_leaf = rows(
            tmp_path / "leaf" / "server.db", "SELECT round, COUNT(*), SUM(env_steps) FROM updates GROUP BY round"
        )
        assert at_root == at_mid == at_leaf and [r for r, *_ in at_root] == [1, 2, 3]
        assert rows(tmp_path / "root" / "server.db", "SELECT DISTINCT client FROM updates") == [("mid",)]
        for i in (0, 1):
            assert json.loads((tmp_path / f"device{i}" / "acting.json").read_text())["version"] == 3
    finally:
        stop_all(processes)
