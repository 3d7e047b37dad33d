"""The simulated clients' side of a round: who is asked, batched local training in shards, the
attackers' replacements, and each update through the client side of the update pipeline and back
out of the server's decoder, as the deployed server would receive it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from fedrl.agents import LocalResult
from fedrl.core.compress import dense, encode
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import ClientMessage, PipelineState, after_sending, client_message, decode_update
from fedrl.core.rows import put_rows
from fedrl.core.update import Update, UpdateMetrics
from fedrl.envs.base import put_clients
from fedrl.experiment.streams import ATTACK_STREAM, PIPELINE_STREAM, SAMPLE_STREAM
from fedrl.sim.attacks import attack
from fedrl.sim.setup import SimSetup
from fedrl.sim.shards import shard_job
from fedrl.sim.state import SimState


def sample_clients(setup: SimSetup, round_: int) -> np.ndarray:
    """The sorted indices of the clients asked to take part in ``round_``: ``clients_per_round``
    of them, or under central DP each client independently with probability ``fraction`` (Poisson
    sampling, the sampling its accountant assumes)."""
    rng, fed = setup.rng(SAMPLE_STREAM, round_), setup.config.federation
    if setup.config.pipeline.dp.mode == "central":
        return np.flatnonzero(rng.random(fed.n_clients) < fed.fraction)
    return np.sort(rng.choice(fed.n_clients, size=fed.clients_per_round, replace=False))


def shards(clients: np.ndarray, shard_size: int) -> list[np.ndarray]:
    """Split client indices into consecutive shards of at most ``shard_size``."""
    return [clients[i : i + shard_size] for i in range(0, len(clients), shard_size)]


def to_updates(
    setup: SimSetup, rows: np.ndarray, result: LocalResult, params: np.ndarray, version: int, rng
) -> list[Update]:
    """One ``Update`` per client of a shard; a malicious client's delta is replaced by its attack."""
    updates = []
    deltas = (result.params - params).astype(np.float32, copy=False)  # rows of one array: aggregation stacks none
    for i, c in enumerate(rows):
        delta = deltas[i]
        if setup.malicious[c]:
            delta = attack(setup.config.attack, delta, setup.random_policy - params, rng)
        control = result.control_delta[i] if result.control_delta is not None else None
        updates.append(
            Update(
                int(c),
                version,
                delta,
                int(result.env_steps[i]),
                UpdateMetrics(float(result.loss[i]), int(result.episodes[i])),
                control,
            )
        )
    return updates


def client_messages(
    setup: SimSetup, pipeline_state: PipelineState, updates: list[Update], tags: tuple
) -> tuple[list[ClientMessage], PipelineState]:
    """Each update through the client side of the pipeline, with its client's error-feedback
    residual and its own random stream; and the pipeline state after sending."""
    clients = np.array([u.client_id for u in updates], dtype=np.int64)
    residuals = pipeline_state.residual
    messages = []
    for u in updates:
        residual = None if residuals is None else residuals[u.client_id]
        rng = setup.rng(PIPELINE_STREAM, *tags, u.client_id)
        messages.append(client_message(setup.config.pipeline, u.delta, residual, rng, setup.net.spec.sizes))
    return messages, after_sending(pipeline_state, clients, messages)


class Received(NamedTuple):
    """An update as the server decoded it, and the bytes its message took on the wire (with
    SCAFFOLD's dense control delta)."""

    update: Update
    uplink_bytes: int


def transmit(
    setup: SimSetup, pipeline_state: PipelineState, updates: list[Update], tags: tuple
) -> tuple[list[Received], PipelineState]:
    """Send ``updates`` through the client side of the pipeline and decode them as the server
    does; returns what the server received and the pipeline state after sending. A pipeline that
    applies nothing delivers each delta exactly as sent (float32, whole), so then the update is
    passed on as it is, still a row of its shard's array (aggregation stacks no copy), counted at
    the size of its encoding."""
    if setup.config.pipeline.applies_nothing and pipeline_state.residual is None and updates:
        size = len(encode(dense(updates[0].delta)))  # every dense update of this model is as long
        clients = np.array([u.client_id for u in updates], dtype=np.int64)
        received = [Received(u, size + _control_bytes(u)) for u in updates]
        return received, after_sending(pipeline_state, clients, [])
    messages, pipeline_state = client_messages(setup, pipeline_state, updates, tags)
    received = []
    for u, m in zip(updates, messages):
        delta = decode_update(m.payload, setup.net.spec.dim)
        received.append(Received(replace(u, delta=delta), len(m.payload) + _control_bytes(u)))
    return received, pipeline_state


def _control_bytes(u: Update) -> int:
    """The bytes of SCAFFOLD's dense control delta beside an update (0 without one)."""
    return len(encode(dense(u.control_delta))) if u.control_delta is not None else 0


def train_clients(
    setup: SimSetup, state: SimState, clients: np.ndarray, tags: tuple, send: Callable = transmit
) -> tuple[list, SimState, NormStats | None]:
    """Train ``clients`` from ``state``'s global version in shards, on the run's backend; returns
    what ``send`` makes of their updates (attacks applied) -- by default what the server receives
    after the pipeline --, the state with their env, learner and pipeline state advanced, and the
    normalisation statistics of what each of them observed (None without normalisation). The
    clients of a shard lost with its worker (``backend.on_failure: drop``) send nothing and keep
    their state, as if they had not been reached."""
    groups = shards(clients, setup.config.federation.shard_size)
    start = state  # every shard trains from the round's start (the loop below advances ``state``)
    jobs = (shard_job(setup, start, rows, (*tags, i)) for i, rows in enumerate(groups))
    results = setup.shards.train(setup, start.params, jobs)
    updates: list = []
    increments: list[NormStats] = []
    for i, (rows, result) in enumerate(zip(groups, results)):
        if result is None:
            continue
        raw = to_updates(setup, rows, result, state.params, state.version, setup.rng(ATTACK_STREAM, *tags, i))
        sent, pipeline_state = send(setup, state.pipeline_state, raw, tags)
        updates += sent
        if result.norm is not None:
            increments.append(result.norm)
        state = replace(
            state,
            env_state=put_clients(state.env_state, rows, result.env_state),
            client_state=put_rows(state.client_state, rows, result.client_state),
            pipeline_state=pipeline_state,
        )
    return updates, state, NormStats.concat(increments) if increments else None
