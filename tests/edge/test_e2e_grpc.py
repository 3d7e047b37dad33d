"""A real deployment on one machine: a `fedrl server` process and `fedrl client` processes over gRPC.

Everything is real: processes, sockets, files, SIGKILL. To kill a client in the middle of an
upload, the server is frozen (SIGSTOP) while the client trains, so that the client's push
hangs; the client is killed then, and the server thawed (SIGCONT).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedrl.server.store import Store
from fedrl.wire.pending import PendingStore

pytestmark = pytest.mark.slow

TARGET = 300.0
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def server_config(
    n_clients: int, federation: dict, pipeline: dict, learner: dict | None = None, strategy: dict | None = None
) -> dict:
    """Federated CartPole that a few rounds solve, with short waits."""
    return {
        "experiment": {
            "name": "e2e",
            "seed": 1,
            "env": {"family": "cartpole", "heterogeneity": 0.5},
            "learner": {"name": "ppo", "n_envs": 4, "n_steps": 64, "lr": 0.005, "hidden": [32, 32], **(learner or {})},
            "strategy": strategy or {"name": "fedavg"},
            "federation": {"n_clients": n_clients, "local_steps": 512, **federation},
            "pipeline": pipeline,
        },
        "rounds": {"deadline_s": 120, "heartbeat_s": 0.5, "retry_s": 0.2, "liveness_s": 60},
        "gate": {"heldout_clients": 3, "episodes": 2},
    }


def fedrl(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedrl.cli", *args]


def events(log: Path, name: str) -> list[dict]:
    """The JSON log lines of event ``name`` (other lines, such as warnings, are skipped)."""
    found = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == name:
            found.append(entry)
    return found


def logged(log: Path, name: str, process: subprocess.Popen, timeout: float) -> None:
    """Wait until ``process`` logs event ``name``; fail with its last lines if it exits first."""
    deadline = time.monotonic() + timeout
    while not events(log, name):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text().splitlines()[-5:]) if log.exists() else ""
            pytest.fail(f"no {name!r} from {log.name} (exit code {process.poll()}):\n{tail}")
        time.sleep(0.05)


def eventually(condition, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


class Deployment:
    """A server state directory with enrolled clients, and the processes started on it."""

    def __init__(
        self,
        root: Path,
        n_clients: int,
        federation: dict,
        pipeline: dict,
        learner: dict | None = None,
        strategy: dict | None = None,
    ) -> None:
        self.root, self.n_clients = root, n_clients
        self.port = _free_port()
        self.processes: list[subprocess.Popen] = []
        config = server_config(n_clients, federation, pipeline, learner, strategy)
        (root / "server.yaml").write_text(yaml.safe_dump(config))
        for i in range(n_clients):
            subprocess.run(
                fedrl(
                    "fleet",
                    "add-client",
                    f"c{i}",
                    "--state-dir",
                    str(root / "srv"),
                    "--token-file",
                    str(root / f"token{i}"),
                ),
                check=True,
                capture_output=True,
                env=ENV,
            )

    def _start(self, command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "a") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env or ENV)
        self.processes.append(process)
        return process

    def start_server(self) -> subprocess.Popen:
        return self._start(
            fedrl(
                "server",
                "--config",
                str(self.root / "server.yaml"),
                "--state-dir",
                str(self.root / "srv"),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--metrics",
                "off",
                "--insecure",
            ),
            self.root / "server.log",
        )

    def start_client(
        self, i: int, log: str | None = None, token: str | None = None, extra: tuple = (), env: dict | None = None
    ) -> subprocess.Popen:
        secret = ["--token", token] if token else ["--token-file", str(self.root / f"token{i}")]
        return self._start(
            fedrl(
                "client",
                "--server",
                f"127.0.0.1:{self.port}",
                "--name",
                f"c{i}",
                "--client-index",
                str(i),
                *secret,
                "--state-dir",
                str(self.state_dir(i)),
                "--env",
                "cartpole",
                "--until-finished",
                "--insecure",
                "--timeout",
                "5",
                "--act-period",
                "0.001",  # a device's pace: unpaced, five simulated devices would fight for two cores
                *extra,
            ),
            self.root / (log or f"c{i}.log"),
            env,
        )

    def run_to_the_end(self) -> None:
        """Start the server and every client, and wait for each client to finish its run cleanly."""
        self.start_server()
        clients = [self.start_client(i) for i in range(self.n_clients)]
        for client in clients:
            assert client.wait(timeout=240) == 0

    def state_dir(self, i: int) -> Path:
        return self.root / f"client{i}"

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
                process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deployment(request, tmp_path):
    n_clients, federation, *more = request.param  # the experiment's pipeline, learner and strategy, when given
    pipeline, learner, strategy = [*more, {}, {}, {}][:3]
    made = Deployment(tmp_path, n_clients, federation, pipeline, learner, strategy)
    yield made
    made.stop_all()


def freeze_server_during_upload(server: subprocess.Popen, log: Path) -> bool:
    """Freeze the server the moment the client logging to ``log`` takes a task (its base version
    in hand), so the push of what it then learns hangs; retry with a later task when it could not
    learn without the server. Called before the client starts, so its first task is caught too
    (a run may reach its target in one round). True once its push hangs."""
    seen = 0
    for _ in range(10):
        if not eventually(lambda seen=seen: len(events(log, "task")) > seen, timeout=120, poll=0.005):
            return False
        os.kill(server.pid, signal.SIGSTOP)
        seen, trained = len(events(log, "task")), len(events(log, "trained"))
        if eventually(lambda trained=trained: len(events(log, "trained")) > trained, timeout=20):
            return True
        os.kill(server.pid, signal.SIGCONT)
    return False


@pytest.mark.parametrize("deployment", [(5, {"rounds": 30, "target_return": TARGET})], indirect=True)
def test_five_clients_reach_the_target_and_a_client_killed_mid_upload_loses_nothing(deployment):
    server = deployment.start_server()
    clients = [deployment.start_client(i) for i in range(5)]

    assert freeze_server_during_upload(server, deployment.root / "c0.log")
    time.sleep(0.5)  # well inside the hanging push
    clients[0].kill()
    clients[0].wait()
    pending = PendingStore(deployment.state_dir(0)).load()
    os.kill(server.pid, signal.SIGCONT)
    assert pending is not None, "the update of the killed client is not on its disk"
    clients[0] = deployment.start_client(0, log="c0-restarted.log")

    for client in clients:
        assert client.wait(timeout=240) == 0
    server.terminate()
    server.wait(20)

    restarted = deployment.root / "c0-restarted.log"
    assert [e["update_id"] for e in events(restarted, "resubmitting")] == [pending.update_id]
    assert pending.update_id in [e["update_id"] for e in events(restarted, "acknowledged")]
    assert not PendingStore(deployment.state_dir(0)).path.exists()
    store = Store(deployment.root / "srv")
    try:
        assert store.find_update(pending.update_id)[:2] == ("c0", pending.round)
        assert store.round_clients(pending.round).count("c0") == 1
        final = store.rounds()[-2]  # the last closed round; the one after it never opens for work
        deployed = store.latest_version()
    finally:
        store.close()
    assert final.promoted and final.candidate_return >= TARGET
    for i in range(5):
        assert json.loads((deployment.state_dir(i) / "acting.json").read_text())["version"] == deployed
    # what the agents keep is theirs alone: files 0600, folders 0700
    kept = [p for i in range(5) for p in [deployment.state_dir(i), *deployment.state_dir(i).rglob("*")]]
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in kept if p.stat().st_mode & 0o077} == {}


@pytest.mark.parametrize("deployment", [(2, {"rounds": 3, "stop_at_target": False})], indirect=True)
def test_clients_ride_out_a_server_killed_and_restarted(deployment):
    server = deployment.start_server()
    clients = [deployment.start_client(i) for i in range(2)]
    logged(deployment.root / "server.log", "round_closed", server, timeout=180)

    server.kill()
    server.wait()
    assert eventually(lambda: all(events(deployment.root / f"c{i}.log", "unreachable") for i in range(2)), timeout=60)
    deployment.start_server()

    for client in clients:
        assert client.wait(timeout=240) == 0
    for i in range(2):
        assert events(deployment.root / f"c{i}.log", "finished")
    assert [e["round"] for e in events(deployment.root / "server.log", "round_closed")] == [1, 2, 3]


COMPRESSED_CENTRAL_DP = {
    "clip_norm": 1.0,
    "compression": {"sparsify": "randomk", "ratio": 0.1, "bits": 4},
    "dp": {"mode": "central", "noise_multiplier": 0.5},
}


@pytest.mark.parametrize(
    "deployment", [(3, {"rounds": 3, "stop_at_target": False}, COMPRESSED_CENTRAL_DP)], indirect=True
)
def test_agents_send_compressed_updates_and_the_server_records_their_bytes_and_the_epsilon_spent(deployment):
    deployment.run_to_the_end()
    store = Store(deployment.root / "srv")
    try:
        closed = store.rounds()[:3]
        dim = store.load_version(0)[0].params.size
    finally:
        store.close()

    trained = [e for i in range(3) for e in events(deployment.root / f"c{i}.log", "trained")]
    assert len(trained) == 9 and all(e["bytes"] < 4 * dim / 40 for e in trained)  # random-10 % at 4 bits
    assert [r.n_updates for r in closed] == [3, 3, 3]  # fraction 1: every client's coin comes up
    assert all(0 < r.uplink_bytes < 3 * 4 * dim / 40 for r in closed)
    assert 0 < closed[0].epsilon < closed[1].epsilon < closed[2].epsilon


@pytest.mark.parametrize(
    "deployment",
    [(3, {"rounds": 2, "stop_at_target": False}, {"secure_aggregation": {"enabled": True, "threshold": 2}})],
    indirect=True,
)
def test_agents_aggregate_securely_and_the_server_stores_no_update(deployment):
    deployment.run_to_the_end()
    store = Store(deployment.root / "srv")
    try:
        closed = store.rounds()[:2]
        files = list((deployment.root / "srv" / "updates").glob("*"))
    finally:
        store.close()

    # every round made a candidate from the masked sum (which the gate then judged); no update was stored
    assert len(closed) == 2 and all(r.candidate_return is not None and r.n_updates == 0 for r in closed)
    assert files == []
    for i in range(3):
        steps = [e["step"] for e in events(deployment.root / f"c{i}.log", "secure_step")]
        assert steps == ["advertise", "share", "mask", "unmask"] * 2


@pytest.mark.parametrize("deployment", [(1, {"rounds": 3})], indirect=True)
def test_a_client_with_a_wrong_token_exits_with_the_servers_reason(deployment):
    deployment.start_server()
    client = deployment.start_client(0, token="not-the-token")

    assert client.wait(timeout=120) == 2
    output = (deployment.root / "c0.log").read_text()
    assert "UNAUTHENTICATED" in output and "unknown token" in output


def test_a_client_without_a_server_keeps_trying_until_sigterm_stops_it_cleanly(tmp_path):
    log = tmp_path / "client.log"
    (tmp_path / "token").write_text("any\n")
    with open(log, "w") as output:
        client = subprocess.Popen(
            fedrl(
                "client",
                "--server",
                f"127.0.0.1:{_free_port()}",
                "--name",
                "c0",
                "--client-index",
                "0",
                "--token-file",
                str(tmp_path / "token"),
                "--state-dir",
                str(tmp_path / "state"),
                "--insecure",
            ),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    try:
        logged(log, "unreachable", client, timeout=60)
        assert eventually(lambda: len(events(log, "unreachable")) >= 3, timeout=30)
        assert client.poll() is None  # still trying: it never gives up on its own
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=15) == 0
    finally:
        if client.poll() is None:
            client.kill()
    assert events(log, "stopped")
    assert [e["attempt"] for e in events(log, "unreachable")][:3] == [1, 2, 3]


USER_CODE = Path(__file__).parents[2] / "examples" / "extending"


@pytest.mark.parametrize("deployment", [(1, {"rounds": 2, "stop_at_target": False})], indirect=True)
def test_a_device_runs_the_experiments_own_network_and_loss_only_when_its_operator_allows_them(deployment):
    config = yaml.safe_load((deployment.root / "server.yaml").read_text())
    config["experiment"]["learner"] = {
        "name": "spo_loss:spo",
        "n_envs": 4,
        "n_steps": 64,
        "network": "residual_net:make",
    }
    config["experiment"]["strategy"] = {"name": "server_nesterov:NesterovMomentum", "options": {"momentum": 0.5}}
    config["experiment"]["learner"]["network_dir"] = config["experiment"]["strategy"]["strategy_dir"] = str(USER_CODE)
    config["experiment"]["learner"]["learner_dir"] = str(USER_CODE)
    (deployment.root / "server.yaml").write_text(yaml.safe_dump(config))
    server = deployment.start_server()
    device_env = {**ENV, "PYTHONPATH": os.pathsep.join([str(USER_CODE), ENV.get("PYTHONPATH", "")])}

    refused = deployment.start_client(0, log="refused.log", env=device_env)
    assert refused.wait(timeout=120) != 0
    allowed = deployment.start_client(
        0, extra=("--allow-code", "residual_net:make", "--allow-code", "spo_loss:spo"), env=device_env
    )
    assert allowed.wait(timeout=240) == 0
    server.terminate()
    server.wait(20)

    reason = " ".join((deployment.root / "refused.log").read_text().split())
    assert "is the server's to name but this machine's to allow" in reason and "--allow-code" in reason
    assert [e["round"] for e in events(deployment.root / "server.log", "round_closed")] == [1, 2]
    acting = json.loads((deployment.state_dir(0) / "acting.json").read_text())
    assert acting["version"] >= 1
    from fedrl.policy.files import read_card

    assert read_card(deployment.root / "srv").network == "residual_net:make"
    assert read_card(deployment.state_dir(0)).network == "residual_net:make"


@pytest.mark.parametrize(
    "deployment",
    [
        (3, {"rounds": 2, "stop_at_target": False}, {}, {"normalize": {"obs": True, "reward": True}}),
        (3, {"rounds": 2, "stop_at_target": False}, {}, {"normalize": {"obs": True, "stats": "personal"}}),
        (
            3,
            {"rounds": 3, "stop_at_target": False},
            {},
            {"normalize": {"obs": True, "reward": True}},
            {"name": "fedbuff", "buffer_size": 2},
        ),
    ],
    ids=["fleet", "personal", "fedbuff"],
    indirect=True,
)
def test_devices_normalise_and_the_server_merges_their_statistics_into_each_version(deployment):
    from fedrl.policy import load_policy

    deployment.run_to_the_end()
    store = Store(deployment.root / "srv")
    try:
        latest = store.latest_version()
        model = store.load_version(latest)[0]
        promoted = [r.round for r in store.rounds() if r.promoted]
        steps = store.db.execute(
            f"SELECT SUM(env_steps) FROM updates WHERE round IN ({','.join(map(str, promoted))})"
        ).fetchone()[0]
    finally:
        store.close()

    # every observation the devices learned from, counted once, in the deployed version's statistics
    assert latest == len(promoted) >= 1 and model.norm.obs.count == steps
    card = load_policy(deployment.root / "srv").card  # the deployed policy scales as the devices do
    np.testing.assert_allclose(card.obs_norm.mean, model.norm.obs.mean.astype(np.float32))
    personal = "personal" in (deployment.root / "server.yaml").read_text()
    for i in range(3):
        acting = load_policy(deployment.state_dir(i)).card.obs_norm  # what each device acts with
        assert acting is not None
        if personal:  # its own statistics: those of the 512 steps of each of its 2 rounds
            own = np.array(acting.mean)
            assert not np.allclose(own, card.obs_norm.mean)
        else:
            assert acting.mean == card.obs_norm.mean


@pytest.mark.parametrize(
    "deployment", [(3, {"rounds": 4, "stop_at_target": False}, {}, {}, {"name": "fedasync"})], indirect=True
)
def test_fedasync_on_a_real_server_makes_one_candidate_per_update(deployment):
    deployment.run_to_the_end()
    store = Store(deployment.root / "srv")
    try:
        per_round = dict(store.db.execute("SELECT round, COUNT(*) FROM updates GROUP BY round").fetchall())
        closed = [r.round for r in store.rounds() if r.closed_at is not None]
    finally:
        store.close()

    # FedAsync makes one candidate per update (the gate decides which are deployed); every round of
    # the run closed, none failed (the race of two arrivals during one close is pinned down in
    # tests/server/test_coordinator.py, where it can be made to happen every time)
    assert closed == [1, 2, 3, 4]
    assert all(per_round[r] == 1 for r in closed)
    assert not events(deployment.root / "server.log", "tick_failed")


@pytest.mark.parametrize(
    "deployment",
    [
        (
            3,
            {"rounds": 2, "stop_at_target": False},
            {"secure_aggregation": {"enabled": True, "threshold": 2}},
            {"normalize": {"obs": True, "reward": True}},
        )
    ],
    indirect=True,
)
def test_under_secure_aggregation_the_fleets_statistics_travel_inside_the_secure_sum(deployment):
    from fedrl.policy import load_policy

    deployment.run_to_the_end()
    store = Store(deployment.root / "srv")
    try:
        latest = store.latest_version()
        counts = [store.load_version(v)[0].norm.obs.count for v in range(latest + 1)]
        stored = store.db.execute("SELECT COUNT(*) FROM updates").fetchone()[0]
        model = store.load_version(latest)[0]
    finally:
        store.close()

    # no update nor any device's statistics was stored; each version's statistics grew by whole rounds
    # of 2 or 3 devices' observations (the survivors' of the round that made it), and devices act with them
    per_round = np.diff(counts)
    assert latest >= 1 and stored == 0
    assert all(d in (2 * 512, 3 * 512) for d in per_round), counts
    for i in range(3):
        acting = load_policy(deployment.state_dir(i)).card.obs_norm
        np.testing.assert_allclose(acting.mean, model.norm.obs.mean.astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize(
    "deployment",
    [
        (
            3,
            {"rounds": 2, "stop_at_target": False},
            {"secure_aggregation": {"enabled": True, "threshold": 2}},
            {"normalize": {"obs": True, "stats": "personal"}},
        )
    ],
    indirect=True,
)
def test_under_secure_aggregation_personal_statistics_stay_on_each_device(deployment):
    from fedrl.policy import load_policy

    deployment.run_to_the_end()
    store = Store(deployment.root / "srv")
    try:
        model = store.load_version(store.latest_version())[0]
    finally:
        store.close()

    # the server saw no statistics: its versions keep the empty ones; each device acts with its own
    assert model.version >= 1 and model.norm.obs.count == 0
    means = [np.array(load_policy(deployment.state_dir(i)).card.obs_norm.mean) for i in range(3)]
    assert all(np.abs(m).sum() > 0 for m in means) and not np.allclose(means[0], means[1])
