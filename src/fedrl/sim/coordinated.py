"""Simulated clients driving the deployed server's coordinator, in one process, with no network.

The coordinator (``fedrl.server.coordinator``) knows no transport, so the simulator can be its
transport: every simulated client registers, heartbeats, asks for a task, trains in the
simulator's batched shards from the version it was given, and submits its update exactly as
an edge agent would -- with an update pipeline in the experiment, as the pipeline's encoded
payload, made from the same random stream and error-feedback residual as the simulator's client
(and the edge agent of that index). It is how the deployed path is checked against the simulator
(same config and seed, same aggregated model) and how a deployment config is rehearsed before any
device is involved.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from fedrl.core.update import Update
from fedrl.server.config import ServerConfig
from fedrl.server.coordinator import Coordinator
from fedrl.sim.engine import SimState, client_messages, initial_state, train_clients
from fedrl.sim.setup import Setup
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


def encode(setup: Setup, pipeline_state: dict[str, np.ndarray], updates: list[Update], tags: tuple
           ) -> tuple[list[tuple[Update, bytes | None]], dict[str, np.ndarray]]:
    """Each update with its payload from the client side of the pipeline (the simulator's own
    ``client_messages``), and the pipeline state after sending; no payloads (the deltas travel as
    they are) when the pipeline applies nothing. A ``send`` for ``train_clients``."""
    if setup.config.pipeline.applies_nothing:
        return [(u, None) for u in updates], pipeline_state
    messages, pipeline_state = client_messages(setup, pipeline_state, updates, tags)
    return [(u, m.payload) for u, m in zip(updates, messages)], pipeline_state


def coordinated_round(coordinator: Coordinator, state: SimState, round_: int) -> SimState:
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
        sent, state = train_clients(coordinator.setup, state, np.array(sorted(tasks)), (round_,), send=encode)
        for u, payload in sent:
            task, name = tasks[u.client_id], client_name(u.client_id)
            submission = Submission(f"{name}-r{task.round}", name, task.round, task.base_version,
                                    None if payload else u.delta, u.env_steps, u.metrics, u.control_delta, payload=payload)
            coordinator.submit(name, replace(submission, digest=submission.sent_digest))
    coordinator.tick()  # also closes a central-DP round that sampled no one
    return state
