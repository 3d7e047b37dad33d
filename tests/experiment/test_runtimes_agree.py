"""One experiment, two runtimes: the deployed server's coordinator, driven by simulated clients
in this process, aggregates exactly as the simulator does.

The coordinator knows no transport, so the test is its transport: every simulated client
registers, heartbeats, asks for a task, trains in the simulator's batched shards from the version
it was given, and submits its update exactly as an edge agent would -- with an update pipeline in
the experiment, as the pipeline's encoded payload, made from the same random stream and
error-feedback residual as the simulator's client.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from fedrl.core.pipeline import PipelineState
from fedrl.core.update import Update
from fedrl.experiment.loading import parse_config
from fedrl.server.config import ServerConfig
from fedrl.server.coordinator import Coordinator
from fedrl.sim.clients import client_messages, train_clients
from fedrl.sim.engine import initial_state
from fedrl.sim.setup import SimSetup
from fedrl.sim.state import SimState
from fedrl.sim.sync import sync_round
from fedrl.wire.records import Submission, Task


def client_name(index: int) -> str:
    """The name simulated client ``index`` registers under."""
    return f"sim-{index:05d}"


def open_coordinated(config: ServerConfig, state_dir: Path) -> tuple[Coordinator, SimState]:
    """The coordinator with every simulated client registered, and the clients' own state."""
    coordinator = Coordinator.open(config, state_dir)
    known = {c.client for c in coordinator.status().clients}
    for i in range(config.experiment.federation.n_clients):
        if client_name(i) not in known:
            coordinator.add_client(client_name(i))
            coordinator.register(client_name(i))
    return coordinator, initial_state(SimSetup(config.experiment))


def encode(
    setup: SimSetup, pipeline_state: PipelineState, updates: list[Update], tags: tuple
) -> tuple[list[tuple[Update, bytes | None]], PipelineState]:
    """Each update with its payload from the client side of the pipeline (the simulator's own
    ``client_messages``), and the pipeline state after sending; no payloads (the deltas travel as
    they are) when the pipeline applies nothing. A ``send`` for ``train_clients``."""
    if setup.config.pipeline.applies_nothing:
        return [(u, None) for u in updates], pipeline_state
    messages, pipeline_state = client_messages(setup, pipeline_state, updates, tags)
    return [(u, m.payload) for u, m in zip(updates, messages)], pipeline_state


def coordinated_round(coordinator: Coordinator, setup: SimSetup, state: SimState, round_: int) -> SimState:
    """One round: every client heartbeats and asks for work; those given a task train from the
    deployed version and submit (their payload, with a pipeline); the coordinator closes the
    round. Returns the clients' state."""
    names = [client_name(i) for i in range(coordinator.config.experiment.federation.n_clients)]
    for name in names:
        coordinator.heartbeat(name, coordinator.deployed_version)
    tasks = {i: t for i, name in enumerate(names) if isinstance(t := coordinator.task(name), Task)}
    if tasks:
        model = coordinator.model()
        state = replace(state, params=model.params, version=model.version)
        sent, state, _ = train_clients(setup, state, np.array(sorted(tasks)), (round_,), send=encode)
        for u, payload in sent:
            task, name = tasks[u.client_id], client_name(u.client_id)
            submission = Submission(
                f"{name}-r{task.round}",
                name,
                task.round,
                task.base_version,
                None if payload else u.delta,
                u.env_steps,
                u.metrics.as_mapping(),
                u.control_delta,
                payload=payload,
            )
            coordinator.submit(name, replace(submission, digest=submission.sent_digest))
    coordinator.tick()  # also closes a central-DP round that sampled no one
    return state


@dataclass
class BothRuntimes:
    """The same experiment run by the simulator and by a coordinator driven by simulated clients."""

    setup: SimSetup
    sim: SimState
    coordinator: Coordinator
    clients: SimState
    uplink: list[int]  # the simulator's measured uplink bytes, per round


def run_both(tmp_path: Path, experiment: dict, rounds: int) -> BothRuntimes:
    """``rounds`` synchronous rounds of ``experiment`` in both runtimes (no gate: every candidate deploys)."""
    parsed = parse_config(experiment)
    setup = SimSetup(parsed)
    coordinator, clients = open_coordinated(
        ServerConfig(experiment=parsed, gate={"enabled": False}), tmp_path / "state"
    )
    sim, uplink = initial_state(setup), []
    for round_ in range(1, rounds + 1):
        sim, stats = sync_round(setup, sim, round_)
        clients = coordinated_round(coordinator, setup, clients, round_)
        uplink.append(stats.traffic.uplink)
    return BothRuntimes(setup, sim, coordinator, clients, uplink)


def test_the_coordinator_reproduces_the_simulators_rounds_exactly(tmp_path, tiny_config):
    # Prepare and execute: every client takes part in every round
    both = run_both(tmp_path, {**tiny_config, "strategy": {"name": "fedavgm", "momentum": 0.5}}, rounds=2)

    # Assert: the same global model, bit for bit, and every update stored
    assert both.coordinator.deployed_version == 2
    np.testing.assert_array_equal(both.coordinator.model().params, both.sim.params)
    assert [r.n_updates for r in both.coordinator.status().rounds[:2]] == [3, 3]


def test_a_central_dp_round_draws_the_same_noise_in_both_runtimes(tmp_path, tiny_config):
    # Prepare and execute: every client sampled (fraction 1), so both runtimes noise the same sum
    pipeline = {"clip_norm": 1.0, "dp": {"mode": "central", "noise_multiplier": 0.5}}
    both = run_both(tmp_path, {**tiny_config, "pipeline": pipeline}, rounds=2)

    # Assert: the same noised model, bit for bit
    np.testing.assert_array_equal(both.coordinator.model().params, both.sim.params)
    assert both.coordinator.deployed_version == 2


@pytest.mark.parametrize(
    "compression",
    [
        {"sparsify": "topk", "ratio": 0.1, "bits": 8, "error_feedback": True},  # biased, with a residual on each client
        {"sparsify": "randomk", "ratio": 0.1, "bits": 4},  # unbiased: a seed instead of indices
    ],
    ids=["topk-8bit-feedback", "randomk-4bit"],
)
def test_a_compressed_run_through_the_coordinator_matches_the_simulator_and_its_uplink_bytes(
    tmp_path, tiny_config, compression
):
    # Prepare and execute
    both = run_both(tmp_path, {**tiny_config, "pipeline": {"compression": compression}}, rounds=3)

    # Assert: the same global model and client residuals, bit for bit, from the same bytes
    np.testing.assert_array_equal(both.coordinator.model().params, both.sim.params)
    np.testing.assert_array_equal(both.clients.pipeline_state.residual, both.sim.pipeline_state.residual)
    assert both.clients.pipeline_state.participation is both.sim.pipeline_state.participation is None
    assert [r.uplink_bytes for r in both.coordinator.status().rounds[:3]] == both.uplink
    assert both.uplink[0] < 3 * 4 * both.setup.net.spec.dim / 4
