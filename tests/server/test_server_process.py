"""``fedrl server`` as a separate process: kill -9 at any moment, restart, nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedrl.edge.grpc_link import GrpcLink
from fedrl.edge.link import Unreachable
from fedrl.server.store import Store
from fedrl.wire.codec import describe
from fedrl.wire.records import Rejected, Submission, Task

pytestmark = pytest.mark.slow

NAMES = ("a", "b", "c")
CONFIG = (
    "experiment:\n"
    "  seed: 2\n"
    "  learner: {name: ppo, hidden: [16, 16]}\n"
    "  federation: {n_clients: 3, rounds: 1000, local_steps: 64, stop_at_target: false}\n"
    "gate: {enabled: false}\n"
    "limits: {rate_per_s: 1000, burst: 1000}\n"
)


class ServerProcess:
    """A ``fedrl server`` subprocess on free loopback ports, over one state directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "server.yaml"
        self.config.write_text(CONFIG)
        self.state_dir = tmp_path / "state"
        self.proc: subprocess.Popen | None = None
        self.port = self.metrics_port = 0

    def start(self, *options: str) -> None:
        info = self.state_dir / "server.json"
        info.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedrl.cli",
                "server",
                "--config",
                str(self.config),
                "--state-dir",
                str(self.state_dir),
                "--listen",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--insecure",
                *options,
            ],
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        deadline = time.monotonic() + 60
        while not info.exists():
            assert self.proc.poll() is None, "fedrl server exited while starting"
            assert time.monotonic() < deadline, "fedrl server did not start within 60 s"
            time.sleep(0.05)
        served = json.loads(info.read_text())
        self.port, self.metrics_port = served["port"], served["metrics_port"]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def link(self, name: str, token: str) -> GrpcLink:
        return GrpcLink(f"127.0.0.1:{self.port}", token, name, None, timeout_s=10)


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(tmp_path)
    store = Store(process.state_dir)
    process.tokens = {name: store.add_client(name, time.time()) for name in NAMES}
    store.close()
    yield process
    process.stop()


def update(link: GrpcLink, name: str, task: Task, dim: int, update_id: str | None = None) -> Submission:
    delta = np.full(dim, 0.01, dtype=np.float32)
    return Submission(
        update_id or f"{name}-{task.round}",
        name,
        task.round,
        task.base_version,
        delta,
        64,
        {},
        None,
        describe(delta).sha256,
    )


def test_kill_9_mid_round_then_restart_keeps_acknowledged_updates_once(server):
    # Prepare: all three have tasks; two updates are acknowledged, then the server is killed
    server.start()
    links = {n: server.link(n, server.tokens[n]) for n in NAMES}
    dim = links["a"].pull(0).params.size
    tasks = {n: links[n].task() for n in NAMES}
    acks = {n: links[n].push(update(links[n], n, tasks[n], dim)) for n in ("a", "b")}
    server.kill9()
    with pytest.raises(Unreachable):
        links["c"].push(update(links["c"], "c", tasks["c"], dim))

    # Execute: restart on the same state directory; "a" resends (it never saw its ack, say), "c" sends
    server.start()
    links = {n: server.link(n, server.tokens[n]) for n in NAMES}
    again = links["a"].push(update(links["a"], "a", tasks["a"], dim))
    links["c"].push(update(links["c"], "c", tasks["c"], dim))
    deadline = time.monotonic() + 30
    while links["a"].heartbeat(0) < 1:
        assert time.monotonic() < deadline, "the round did not close after the restart"
        time.sleep(0.1)

    # Assert: the resend got the original acknowledgement; round 1 holds exactly three updates
    assert again.duplicate and again.accepted_at == acks["a"].accepted_at
    server.stop()
    store = Store(server.state_dir)
    assert [r.n_updates for r in store.rounds() if r.round == 1] == [3]
    assert sorted(store.round_clients(1)) == list(NAMES)
    events = EventAccumulator(str(server.state_dir / "tensorboard"))  # the server's own TensorBoard files
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("round/updates")] == [(1, 3.0)]


def test_every_acknowledged_update_survives_a_kill_9_during_uploads(server):
    # Prepare: one client per thread uploads as fast as it can (asynchronous FedBuff, so every
    # update is welcome); the server is killed while uploads are in flight
    server.config.write_text(
        CONFIG.replace(
            "stop_at_target: false}",
            "stop_at_target: false}\n  strategy: {name: fedbuff, buffer_size: 4}",
        )
        + "rounds: {max_staleness: 1000}\n"
    )
    server.start()
    acked: list[str] = []
    stop = threading.Event()

    def upload(name: str) -> None:
        link = server.link(name, server.tokens[name])
        dim = link.pull(0).params.size
        while not stop.is_set():
            try:
                task = link.task()
                ack = link.push(update(link, name, task, dim, update_id=str(uuid.uuid4())))
                acked.append(ack.update_id)
            except (Unreachable, Rejected):
                return

    threads = [threading.Thread(target=upload, args=(n,)) for n in NAMES]
    for t in threads:
        t.start()
    time.sleep(3.0)

    # Execute
    server.kill9()
    stop.set()
    for t in threads:
        t.join(30)
    server.start()
    server.stop()

    # Assert: every acknowledged id is stored, once
    store = Store(server.state_dir)
    stored = [row[0] for row in store.db.execute("SELECT update_id FROM updates")]
    assert len(acked) > 10
    assert set(acked) <= set(stored) and len(stored) == len(set(stored))


def test_a_server_that_exits_with_its_run_waits_until_every_client_online_has_heard(server):
    # Prepare: a one-round run; all three clients train, the round closes, the run is over
    server.start(
        "--exit-when-finished", "--set", "experiment.federation.rounds=1", "--set", "rounds.retry_s=0.2",
        "--set", "rounds.liveness_s=60",
    )  # fmt: skip
    links = {n: server.link(n, server.tokens[n]) for n in NAMES}
    dim = links["a"].pull(0).params.size
    for name, link in links.items():
        link.push(update(link, name, link.task(), dim))
    deadline = time.monotonic() + 30
    while links["a"].heartbeat(0) < 1:
        assert time.monotonic() < deadline, "the round did not close"
        time.sleep(0.1)

    # Execute: "a" and "b" hear that the run is over; "c" (online, busy, say) has not asked yet
    assert links["a"].task().finished and links["b"].task().finished
    time.sleep(4.0)  # more than twice the grace of a few polls (3 x retry_s + 1 s)
    still_serving = server.proc.poll() is None
    told_c = links["c"].task()

    # Assert: the server waited for "c", then exited cleanly
    assert still_serving and told_c.finished
    assert server.proc.wait(30) == 0


def test_metrics_endpoint_reports_the_server(server):
    # Prepare
    server.start()

    # Execute
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()

    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/healthz", timeout=10).read())

    # Assert
    assert "fedrl_deployed_version 0.0" in text and "fedrl_current_round 1.0" in text
    assert health == {"status": "ok", "deployed_version": 0, "finished": False}


def _fleet(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    """``fedrl fleet ARGS --state-dir ...`` in its own process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "fedrl.cli", "fleet", *args, "--state-dir", str(server.state_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _refused_within(call, seconds: float) -> Rejected | None:
    """The refusal ``call`` meets within ``seconds`` (it may still succeed for a moment), or None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            call()
        except Rejected as refusal:
            return refusal
        time.sleep(0.05)
    return None


def test_a_revoked_token_stops_working_on_the_running_server_and_a_rotated_one_replaces_it(server, tmp_path):
    # Prepare: "a" is known to the running server (its token is cached)
    server.start()
    a = server.link("a", server.tokens["a"])
    assert a.register().client == "a"

    # Execute: the operator revokes it from another process, then issues a new token
    revoked = _fleet(server, "revoke", "a")
    refused = _refused_within(a.register, 2.0)
    status = _fleet(server, "status")
    rotated = _fleet(server, "rotate-token", "a", "--token-file", str(tmp_path / "a.token"))
    renewed = server.link("a", (tmp_path / "a.token").read_text().strip())

    # Assert: refused within a second or two, saying why; shown in the status; the new token works
    assert revoked.returncode == 0 and refused is not None and refused.reason.value == "UNAUTHENTICATED"
    assert "revoked" in refused.message and "rotate-token a" in refused.message
    assert "revoked" in status.stdout
    assert rotated.returncode == 0 and oct((tmp_path / "a.token").stat().st_mode & 0o777) == "0o600"
    assert renewed.register().client == "a"
    assert _refused_within(a.register, 2.0) is not None  # the old token stays dead
    assert server.link("b", server.tokens["b"]).register().client == "b"  # no one else is touched
    assert _fleet(server, "revoke", "nobody").returncode == 2
