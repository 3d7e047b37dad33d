"""Asynchronous rounds: updates arrive when their clients finish, weighted by staleness.

An event loop over simulated time. Idle, available clients start training from the current
global version (together, as one batched call: a "wave"); each update arrives after its
client's compute and link time; arrivals go into the server's buffer, and every
``strategy.buffer_size`` of them (1 for FedAsync, K for FedBuff) the strategy makes a new
version, discounting each update by its staleness. A client starts again as soon as its update
has arrived; an unavailable client tries again ``fleet.retry_s`` later. What is in flight and
in the buffer is kept as arrays in ``SimState.inflight`` (an ``InFlight``), so a checkpoint holds it and a
resumed run continues exactly.

With normalisation, the statistics of what a client observed travel beside its update and join
the fleet's when the buffer holding it is flushed, as a server merges those sent beside a buffer's
updates; personal statistics take in what their client observed as soon as it has trained.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedrl.core.normstats import NormStats
from fedrl.core.rows import copy_rows, take_rows, write_rows
from fedrl.core.update import Update
from fedrl.experiment.streams import AVAILABILITY_STREAM
from fedrl.sim.clients import train_clients
from fedrl.sim.setup import SimSetup
from fedrl.sim.state import InFlight, RoundStats, SimState, aggregate


def _start_wave(setup: SimSetup, state: SimState, fl: InFlight, now: float, tags: tuple) -> tuple[SimState, int]:
    """Idle, ready clients try to start (writing ``fl``); returns the state and the clients away."""
    ready = np.flatnonzero(np.isinf(fl.busy_until) & (fl.next_try <= now))
    if not len(ready):
        return state, 0
    ok = setup.fleet.available(ready, tags[0], setup.rng(AVAILABILITY_STREAM, *tags))
    away, go = ready[~ok], ready[ok]
    fl.next_try[away] = now + setup.config.fleet.retry_s
    if not len(go):
        return state, len(away)
    received, state, increments = train_clients(setup, state, go, tags)
    updates = [r.update for r in received]
    trained = np.array([u.client_id for u in updates], dtype=np.int64)
    if increments is not None:
        state = _observed(state, fl, trained, increments)
    lost = np.setdiff1d(go, trained)  # a shard lost with its worker: away until their next try
    fl.next_try[lost] = now + setup.config.fleet.retry_s
    go = trained
    if not len(go):
        return state, len(away) + len(lost)
    steps = np.array([u.env_steps for u in updates])
    fl.delta[go] = np.stack([u.delta for u in updates])
    fl.base_version[go], fl.env_steps[go] = state.version, steps
    fl.loss[go] = [u.metrics.loss for u in updates]
    fl.episodes[go] = [u.metrics.episodes for u in updates]
    fl.busy_until[go] = now + setup.fleet.duration(go, steps)
    return replace(state, env_steps=state.env_steps + int(steps.sum())), len(away) + len(lost)


def _observed(state: SimState, fl: InFlight, clients: np.ndarray, increments: NormStats) -> SimState:
    """Take in what ``clients`` observed while training: into each one's own statistics at once, or,
    for the fleet's, beside its update in flight (writing ``fl``), merged when the buffer is flushed."""
    if state.norm.personal:
        return replace(state, norm=state.norm.absorbed(clients, increments, np.ones(len(clients), dtype=bool)))
    write_rows(fl.stats, clients, increments)
    return state


def _next_event(fl: InFlight, now: float) -> tuple[float, int | None]:
    """The time of the next arrival or retry, and the arriving client (None for a retry)."""
    arriving = int(np.argmin(fl.busy_until))
    waiting = np.isinf(fl.busy_until) & (fl.next_try > now)
    retry = fl.next_try[waiting].min() if waiting.any() else np.inf
    if fl.busy_until[arriving] <= retry:
        return float(fl.busy_until[arriving]), arriving
    return float(retry), None


def _buffer(fl: InFlight, client: int, now: float) -> None:
    """Move ``client``'s update, arrived at ``now``, into the server's next free slot (writing ``fl``)."""
    slot = fl.buffered
    fl.next_try[client] = now
    fl.buffer_client[slot] = client
    fl.buffer_delta[slot] = fl.delta[client]
    fl.buffer_base[slot], fl.buffer_steps[slot] = fl.base_version[client], fl.env_steps[client]
    if fl.stats is not None:
        write_rows(fl.buffer_stats, np.array([slot]), take_rows(fl.stats, np.array([client])))
    fl.busy_until[client] = np.inf


def _flush(setup: SimSetup, state: SimState, fl: InFlight, round_: int) -> tuple[SimState, int, int, float]:
    """Aggregate the buffer's first ``buffer_size`` updates into a new version and free their slots
    (writing ``fl``); returns state, accepted, rejected, mean staleness."""
    size = min(fl.buffered, setup.strategy.buffer_size)
    slots = np.arange(size)
    clients = fl.buffer_client[slots]
    updates = [
        Update(int(c), int(fl.buffer_base[s]), fl.buffer_delta[s].copy(), int(fl.buffer_steps[s]))
        for s, c in zip(slots, clients)
    ]
    if fl.buffer_stats is not None:  # pooled in client order, then merged in, as a server merges a buffer's
        rows = slots[np.argsort(clients, kind="stable")]
        state = replace(state, norm=state.norm.merge_rows(take_rows(fl.buffer_stats, rows), np.ones(len(rows), bool)))
    _free_slots(fl, size)
    state, n_rejected, staleness = aggregate(setup, state, updates, round_)
    return state, len(updates) - n_rejected, n_rejected, staleness


def _free_slots(fl: InFlight, size: int) -> None:
    """Free the buffer's first ``size`` slots, moving any updates after them to the front (writing ``fl``):
    there are such only in a run resumed with a smaller ``strategy.buffer_size``."""
    rest = np.arange(size, fl.buffered)
    front = np.arange(len(rest))
    for array in (fl.buffer_client, fl.buffer_delta, fl.buffer_base, fl.buffer_steps):
        array[front] = array[rest]
    if fl.buffer_stats is not None:
        write_rows(fl.buffer_stats, front, take_rows(fl.buffer_stats, rest))
    fl.buffer_client[len(rest) :] = -1


def async_round(setup: SimSetup, state: SimState, round_: int) -> tuple[SimState, RoundStats]:
    """Run simulated time until ``fraction * n_clients`` updates have arrived. The round works on
    its own copy of the in-flight record, so ``state`` is never changed."""
    target = setup.config.federation.clients_per_round
    now = state.sim_time_s
    if state.inflight is None:
        fleet_stats = None if state.norm is None or state.norm.personal else state.norm
        fl = InFlight.empty(
            setup.config.federation.n_clients, setup.strategy.buffer_size, setup.net.spec.dim, now, fleet_stats
        )
    else:
        fl = copy_rows(state.inflight).with_slots(setup.strategy.buffer_size)
    arrived = accepted = rejected = away = wave = 0
    staleness: list[float] = []
    losses: list[float] = []
    episodes = 0
    while True:
        while fl.buffered >= setup.strategy.buffer_size:
            state, n_ok, n_bad, stale = _flush(setup, state, fl, round_)
            accepted, rejected = accepted + n_ok, rejected + n_bad
            staleness += [stale] * n_ok
        if arrived >= target:
            break
        state, n_away = _start_wave(setup, state, fl, now, (round_, wave))
        away, wave = away + n_away, wave + 1
        now, client = _next_event(fl, now)
        if client is None:
            continue
        losses.append(float(fl.loss[client]))
        episodes += int(fl.episodes[client])
        _buffer(fl, client, now)
        arrived += 1
    stats = RoundStats(
        n_sampled=arrived,
        n_updates=accepted,
        n_dropped=away,
        n_rejected=rejected,
        mean_staleness=float(np.mean(staleness)) if staleness else 0.0,
        train_loss=float(np.nanmean(losses)) if losses else float("nan"),
        episodes=episodes,
    )
    return replace(state, inflight=fl, sim_time_s=now), stats
