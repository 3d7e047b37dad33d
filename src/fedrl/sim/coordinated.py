"""Simulated clients driving the deployed server's coordinator, in one process, with no network.

The coordinator (``fedrl.server.coordinator``) knows no transport, so the simulator can be its
transport: every simulated client registers, heartbeats, asks for a task, trains in the
simulator's batched shards from the version it was given, and submits its update exactly as
an edge agent would. It is how the deployed path is checked against the simulator (same
config and seed, same aggregated model) and how a deployment config is rehearsed before any
device is involved.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fedrl.server.config import ServerConfig
from fedrl.server.coordinator import Coordinator, digest_of
from fedrl.sim.engine import SimState, initial_state, train_clients
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
    return coordinator, initial_state(coordinator.setup)


def coordinated_round(coordinator: Coordinator, state: SimState, round_: int) -> SimState:
    """One round: every client heartbeats and asks for work; those given a task train from the
    deployed version and submit; the coordinator closes the round. Returns the clients' state."""
    names = [client_name(i) for i in range(coordinator.config.experiment.federation.n_clients)]
    for name in names:
        coordinator.heartbeat(name, coordinator.deployed_version)
    tasks = {i: t for i, name in enumerate(names) if isinstance(t := coordinator.task(name), Task)}
    if not tasks:
        return state
    rows = np.array(sorted(tasks))
    model = coordinator.model()
    state = replace(state, params=model.params, version=model.version)
    updates, state = train_clients(coordinator.setup, state, rows, (round_,))
    for u in updates:
        task = tasks[u.client_id]
        coordinator.submit(client_name(u.client_id), Submission(
            f"{client_name(u.client_id)}-r{task.round}", client_name(u.client_id), task.round, task.base_version,
            u.delta, u.env_steps, u.metrics, u.control_delta, digest_of(u.delta),
        ))
    coordinator.tick()
    return state
