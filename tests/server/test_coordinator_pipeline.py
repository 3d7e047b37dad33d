"""The update pipeline in the deployed server: encoded updates, central DP, the privacy budget.

A real coordinator on a real state directory, driven in-process with a controllable clock; the
clients' side is the pipeline's own ``client_message``, as an edge agent makes it.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedrl.cli import app, console
from fedrl.core.compress import decode, decompress, dense, encode
from fedrl.core.pipeline import client_message
from fedrl.core.privacy import epsilon
from fedrl.server.config import ServerConfig, load_server_config
from fedrl.server.coordinator import Coordinator
from fedrl.server.log import logger
from fedrl.server.metrics import ServerMetrics
from fedrl.server.store import Store
from fedrl.wire.records import Reason, Rejected, Submission, Task, Wait

TOP_K = {"compression": {"sparsify": "topk", "ratio": 0.1, "bits": 8, "error_feedback": True}}
CENTRAL = {"clip_norm": 1.0, "dp": {"mode": "central", "noise_multiplier": 2.0}}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_config(
    tmp_path,
    pipeline: dict,
    n_clients: int = 3,
    fraction: float = 1.0,
    rounds: int = 4,
    hidden: tuple[int, ...] = (8, 8),
):
    """A server YAML with the given pipeline section; returns its path."""
    path = tmp_path / "server.yaml"
    experiment = {
        "seed": 5,
        "learner": {"name": "ppo", "hidden": list(hidden)},
        "pipeline": pipeline,
        "federation": {
            "n_clients": n_clients,
            "fraction": fraction,
            "rounds": rounds,
            "local_steps": 64,
            "stop_at_target": False,
        },
    }
    path.write_text(
        yaml.safe_dump({"experiment": experiment, "gate": {"enabled": False}, "rounds": {"deadline_s": 30}})
    )
    return path


def open_with_clients(
    tmp_path, config: ServerConfig, n: int = 3, metrics: ServerMetrics | None = None, clock: Clock | None = None
) -> tuple[Coordinator, list[str]]:
    coordinator = Coordinator.open(config, tmp_path / "state", metrics, clock=clock or Clock())
    names = [f"c{i}" for i in range(n)]
    for name in names:
        coordinator.add_client(name)
    return coordinator, names


def payload_of(coordinator: Coordinator, delta: np.ndarray, seed: int = 0) -> bytes:
    """What a client sends for ``delta``: the pipeline's message, from a fresh residual."""
    residual = np.zeros_like(delta) if coordinator.setup.config.pipeline.compression.error_feedback else None
    rng = np.random.default_rng(seed)
    return client_message(
        coordinator.setup.config.pipeline, delta, residual, rng, coordinator.setup.net.spec.sizes
    ).payload


def encoded(client: str, task: Task, payload: bytes, **changes) -> Submission:
    fields = dict(
        update_id=f"{client}-{task.round}",
        client=client,
        round=task.round,
        base_version=task.base_version,
        delta=None,
        env_steps=64,
        payload=payload,
    )
    submission = Submission(**fields)
    return Submission(**{**fields, "digest": submission.sent_digest, **changes})


def submit_zeros(coordinator: Coordinator, names: list[str]) -> int:
    """Every client with a task sends a zero update; returns how many did."""
    sent = 0
    for name in names:
        task = coordinator.task(name)
        if isinstance(task, Task):
            coordinator.submit(
                name, encoded(name, task, payload_of(coordinator, np.zeros(coordinator.dim, np.float32)))
            )
            sent += 1
    return sent


def test_an_encoded_top_k_update_decodes_to_what_the_client_sent(tmp_path):
    # Prepare
    coordinator, names = open_with_clients(tmp_path, load_server_config(write_config(tmp_path, TOP_K)))
    start = coordinator.model().params.copy()
    rng = np.random.default_rng(0)
    payloads = [payload_of(coordinator, rng.normal(0, 0.1, coordinator.dim).astype(np.float32), i) for i in range(3)]

    # Execute
    for name, payload in zip(names, payloads):
        coordinator.submit(name, encoded(name, coordinator.task(name), payload))
    coordinator.tick()

    # Assert: FedAvg of the decoded updates (equal steps: their mean); the round counts the bytes sent
    sent = np.mean([decompress(decode(p)) for p in payloads], axis=0)
    np.testing.assert_allclose(coordinator.model().params - start, sent, rtol=1e-5, atol=1e-7)
    closed = coordinator.status().rounds[-2]
    assert closed.uplink_bytes == sum(map(len, payloads)) < 3 * 4 * coordinator.dim / 5
    assert closed.epsilon is None


def bad_payloads(coordinator: Coordinator, task: Task, good: bytes) -> dict[str, tuple[str, Submission]]:
    other_model = encode(dense(np.zeros(coordinator.dim + 1, np.float32)))
    return {
        "garbage": ("payload is not an encoded update", encoded("c0", task, b"not an update at all, not even close")),
        "truncated": ("does not match its header", encoded("c0", task, good[:-3])),
        "other model": (f"the model has {coordinator.dim}", encoded("c0", task, other_model)),
        "digest": ("digest mismatch", encoded("c0", task, good, digest="00" * 32)),
        "bare delta": ("not a bare delta", encoded("c0", task, None, delta=decompress(decode(good)), digest="")),
    }


@pytest.mark.parametrize("case", ["garbage", "truncated", "other model", "digest", "bare delta"])
def test_a_malformed_payload_is_refused_with_its_reason_and_changes_nothing(tmp_path, case):
    # Prepare
    metrics = ServerMetrics.create()
    coordinator, _ = open_with_clients(tmp_path, load_server_config(write_config(tmp_path, TOP_K)), metrics=metrics)
    task = coordinator.task("c0")
    good = payload_of(coordinator, np.full(coordinator.dim, 0.1, np.float32))
    words, bad = bad_payloads(coordinator, task, good)[case]

    # Execute
    with pytest.raises(Rejected) as err:
        coordinator.submit("c0", bad)

    # Assert: the refusal says what was wrong and is counted; the round has no update; "c0" may still send its own
    assert err.value.reason is Reason.INVALID_ARGUMENT and words in err.value.message
    assert metrics.registry.get_sample_value("fedrl_updates_rejected_total", {"reason": "INVALID_ARGUMENT"}) == 1
    assert coordinator.status().rounds[-1].n_updates == 0
    assert coordinator.submit("c0", encoded("c0", task, good)).round == 1


def test_central_dp_adds_noise_of_std_z_c_over_the_expected_clients_and_epsilon_grows_per_round(tmp_path):
    # Prepare: fraction 1, so every client is sampled; every client sends zeros, so the model moves by the noise alone
    config = load_server_config(write_config(tmp_path, CENTRAL, hidden=(64, 64)))
    metrics = ServerMetrics.create()
    coordinator, names = open_with_clients(tmp_path, config, metrics=metrics)
    before = coordinator.model().params.copy()

    # Execute
    moves = []
    for _ in range(3):
        assert submit_zeros(coordinator, names) == 3
        coordinator.tick()
        moves.append(coordinator.model().params - before)
        before = coordinator.model().params.copy()

    # Assert: N(0, (z C)^2) on the sum, divided by q N = 3: std 2/3 per coordinate, fresh each round
    for move in moves:
        assert abs(move.std() / (2.0 / 3) - 1) < 0.03 and abs(move.mean()) < 3 * (2.0 / 3) / np.sqrt(coordinator.dim)
    assert abs(np.corrcoef(moves[0], moves[1])[0, 1]) < 0.05
    spent = [r.epsilon for r in coordinator.status().rounds[:3]]
    assert spent == pytest.approx([epsilon(2.0, 1.0, r, 1e-5) for r in (1, 2, 3)]) and spent[0] < spent[1] < spent[2]
    assert metrics.registry.get_sample_value("fedrl_privacy_epsilon") == pytest.approx(spent[2])


def test_local_dp_counts_the_rounds_of_the_client_that_took_part_most(tmp_path):
    # Prepare: rounds close at the deadline with one update; "c0" and "c1" send in round 1, "c2" in round 2
    clock = Clock()
    local = {"clip_norm": 1.0, "dp": {"mode": "local", "noise_multiplier": 2.0}}
    config = load_server_config(write_config(tmp_path, local), ["rounds.min_updates=1"])
    coordinator, _ = open_with_clients(tmp_path, config, clock=clock)

    # Execute
    for senders in (["c0", "c1"], ["c2"]):
        submit_zeros(coordinator, senders)
        clock.now += 31
        coordinator.tick()

    # Assert: two rounds, but no client has sent more than one update: one full Gaussian mechanism
    spent = [r.epsilon for r in coordinator.status().rounds[:2]]
    assert spent == pytest.approx([epsilon(2.0, 1.0, 1, 1e-5)] * 2)


def test_a_restarted_server_adds_the_same_noise_to_the_same_round(tmp_path):
    # Prepare: an unbroken run, and one whose coordinator is closed (as after kill -9) before the round closes
    results = []
    for name, restart in (("once", False), ("twice", True)):
        folder = tmp_path / name
        folder.mkdir()
        config = load_server_config(write_config(folder, CENTRAL))
        coordinator, names = open_with_clients(folder, config)
        submit_zeros(coordinator, names)

        # Execute
        if restart:
            coordinator.close()
            coordinator = Coordinator.open(config, folder / "state", clock=Clock())
        coordinator.tick()
        results.append(coordinator.model().params)

    # Assert
    np.testing.assert_array_equal(results[0], results[1])


def test_central_dp_samples_each_client_by_its_own_coin_without_stand_ins(tmp_path):
    # Prepare: 10 clients, each taking part with probability 0.5
    clock = Clock()
    config = load_server_config(write_config(tmp_path, CENTRAL, n_clients=10, fraction=0.5, rounds=20))
    coordinator, names = open_with_clients(tmp_path, config, n=10, clock=clock)

    # Execute: in every round the sampled clients send; the others ask again after the deadline
    sampled, stand_ins = [], 0
    for _ in range(1, 21):
        sampled.append(submit_zeros(coordinator, names))
        clock.now += 31
        stand_ins += sum(isinstance(coordinator.task(name), Task) for name in names)
        coordinator.tick()

    # Assert: about half take part, never anyone else, and every round closed (those that sampled no one too)
    assert 0.38 < np.mean(sampled) / 10 < 0.62 and len(set(sampled)) > 2
    assert stand_ins == 0
    assert coordinator.status().round == 21 and isinstance(coordinator.task("c0"), Wait)


def test_under_central_dp_an_update_over_the_clip_norm_is_refused(tmp_path):
    # Prepare: a client that skipped its clip (norm 2 C)
    coordinator, _ = open_with_clients(tmp_path, load_server_config(write_config(tmp_path, CENTRAL)))
    task = coordinator.task("c0")
    unclipped = np.full(coordinator.dim, 2.0 / np.sqrt(coordinator.dim), np.float32)

    # Execute
    with pytest.raises(Rejected) as err:
        coordinator.submit("c0", encoded("c0", task, encode(dense(unclipped))))

    # Assert
    assert err.value.reason is Reason.INVALID_ARGUMENT and "exceeds pipeline.clip_norm 1" in err.value.message
    assert coordinator.status().rounds[-1].n_updates == 0


@pytest.fixture
def server_logging_restored():
    """``fedrl server`` points the ``fedrl`` logger at its stderr, which the runner closes: undo that afterwards."""
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers, logger.propagate = handlers, propagate
    logger.setLevel(level)


def test_a_server_whose_rounds_would_spend_more_than_the_target_epsilon_refuses_to_start(
    tmp_path, server_logging_restored
):
    # Prepare
    pipeline = {**CENTRAL, "dp": {**CENTRAL["dp"], "noise_multiplier": 1.0, "target_epsilon": 4.0}}
    path = write_config(tmp_path, pipeline, n_clients=10, fraction=0.1, rounds=60)

    # Execute
    result = CliRunner().invoke(
        app, ["server", "--config", str(path), "--state-dir", str(tmp_path / "srv"), "--insecure", "--metrics", "off"]
    )

    # Assert: one line naming the key and the rounds that fit; nothing was started
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert (
        "experiment.pipeline.dp.target_epsilon = 4.0: 60 rounds at noise_multiplier 1 and sampling rate 0.1" in message
    )
    assert "at most 16 rounds fit (federation.rounds)" in message
    assert not (tmp_path / "srv").exists()


def test_under_secure_aggregation_an_update_in_the_clear_is_refused_and_nothing_stored(tmp_path):
    # Prepare
    config = load_server_config(write_config(tmp_path, {"secure_aggregation": {"enabled": True}}))
    coordinator, names = open_with_clients(tmp_path, config)

    # Execute
    with pytest.raises(Rejected) as refused:
        submit_zeros(coordinator, names)

    # Assert
    assert refused.value.reason is Reason.FAILED_PRECONDITION and "masked" in refused.value.message
    assert coordinator.status().clients[0].updates_accepted == 0
    coordinator.close()


def test_fleet_status_shows_each_rounds_uplink_bytes_and_epsilon(tmp_path, monkeypatch):
    # Prepare: one closed central-DP round
    coordinator, names = open_with_clients(tmp_path, load_server_config(write_config(tmp_path, CENTRAL)))
    submit_zeros(coordinator, names)
    coordinator.tick()
    closed = coordinator.status().rounds[0]
    coordinator.close()
    monkeypatch.setattr(console, "width", 200)

    # Execute
    result = CliRunner().invoke(app, ["fleet", "status", "--state-dir", str(tmp_path / "state")])

    # Assert
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("1 "))
    assert "uplink" in result.output and "epsilon" in result.output
    assert f"{closed.uplink_bytes / 1024:.1f} KiB" in row and f"{closed.epsilon:.2f}" in row


def test_fleet_status_fits_80_columns_and_says_when_the_run_finished(tmp_path, monkeypatch):
    # Prepare: a one-round run, closed; the server's next tick notes that it finished
    coordinator, names = open_with_clients(tmp_path, load_server_config(write_config(tmp_path, {}, rounds=1)))
    submit_zeros(coordinator, names)
    coordinator.tick()
    coordinator.tick()
    coordinator.close()
    monkeypatch.setattr(console, "width", 80)

    # Execute
    result = CliRunner().invoke(app, ["fleet", "status", "--state-dir", str(tmp_path / "state")])

    # Assert
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "run finished" in lines[0] and all(len(line) <= 80 for line in lines)
    assert all(name in result.output for name in names) and " v1 " in result.output


def test_a_state_dir_of_an_earlier_release_gains_the_new_columns(tmp_path):
    # Prepare: a database without the uplink and epsilon columns
    Store(tmp_path / "state").close()
    with sqlite3.connect(tmp_path / "state" / "server.db") as db:
        for table, column in (("rounds", "uplink_bytes"), ("rounds", "epsilon"), ("updates", "uplink_bytes")):
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    config = load_server_config(write_config(tmp_path, TOP_K))

    # Execute
    coordinator, names = open_with_clients(tmp_path, config)
    sent = submit_zeros(coordinator, names)
    coordinator.tick()

    # Assert
    closed = coordinator.status().rounds[0]
    assert sent == 3 and closed.n_updates == 3 and closed.uplink_bytes > 0
