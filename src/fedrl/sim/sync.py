"""Synchronous rounds: sample, train, drop the late, aggregate -- in the clear or through secure
aggregation, where the strategy receives only the mean of the survivors' sum and a round left
below the threshold keeps the old model."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from fedrl.core.compress import dense, encode
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import secure_mean
from fedrl.core.rows import take_rows
from fedrl.core.secagg import BelowThreshold, SecAggConfig, SecureSumResult
from fedrl.core.securestats import from_words, to_words, word_count
from fedrl.core.update import Update, stack_deltas
from fedrl.experiment.aggregation import expected_clients, noise_rng, region_of
from fedrl.experiment.streams import AVAILABILITY_STREAM, SECAGG_STREAM
from fedrl.sim.clients import sample_clients, train_clients
from fedrl.sim.setup import SimSetup
from fedrl.sim.state import RoundStats, SecureOutcome, SimState, Traffic, aggregate


def model_bytes(setup: SimSetup, params: np.ndarray) -> int:
    """What the server sends each client that trains: the dense float32 model (and SCAFFOLD's control)."""
    return len(encode(dense(params))) * (2 if setup.strategy.uses_control_variates else 1)


def measure_traffic(setup: SimSetup, params: np.ndarray, receivers: int, senders: int, uplink: int) -> Traffic:
    """A round's bytes: the global model (dense float32) to each of ``receivers``, and the
    updates' measured sizes back (late ones too: they were sent)."""
    model = model_bytes(setup, params)
    return Traffic(uplink, receivers * model, senders, receivers, senders * model)


def plain_aggregate(
    setup: SimSetup, state: SimState, updates: list[Update], on_time: np.ndarray, round_: int, uplink: int
) -> tuple[SimState, RoundStats]:
    """Screen the on-time ``updates`` and hand them to the strategy; the stats of what became of
    them, with the ``uplink`` bytes all of them took (late ones too: they were sent)."""
    kept = [u for u, ok in zip(updates, on_time) if ok]
    traffic = measure_traffic(setup, state.params, len(updates), len(updates), uplink)
    state, n_rejected, _ = aggregate(setup, state, kept, round_)
    return state, RoundStats(n_updates=len(kept) - n_rejected, n_rejected=n_rejected, traffic=traffic)


def secure_threshold(config: SecAggConfig, n_clients: int) -> int:
    """t for a roster of ``n_clients``: at least 2, and above ``n_clients`` when no sum is possible."""
    return config.threshold if isinstance(config.threshold, int) else config.threshold_for(max(n_clients, 2))


def secure_sum_of(
    setup: SimSetup,
    updates: list[Update],
    arrives: np.ndarray,
    round_: int,
    *tags: int,
    words: np.ndarray | None = None,
) -> tuple[np.ndarray, SecureSumResult] | None:
    """The mean the strategy receives and the protocol's record, with the clients that sent
    ``updates`` as the roster and those not in ``arrives`` dropping after sharing their keys;
    None when fewer than t of them arrive. ``tags`` (a region's) give the protocol its own keys;
    ``words`` (uint32, one row per update) are summed beside, the clients' statistics."""
    stack = np.where(arrives[:, None], stack_deltas(updates), np.float32(0))  # a dropped row is never read
    try:
        return secure_mean(
            setup.config.pipeline,
            stack,
            ~arrives,
            expected_clients(setup),
            setup.rng(SECAGG_STREAM, round_, *tags),
            noise_rng(setup, round_),
            words,
        )
    except BelowThreshold:
        return None


def statistics_words(setup: SimSetup, increments: NormStats, center: NormStats) -> np.ndarray:
    """Each client's statistics (one row of ``increments`` each) as the words it adds to the secure sum,
    around ``center`` (the fleet's as the round began); a row that is not finite, or too large to carry,
    adds nothing (as a device withholds it)."""
    rows = np.zeros((len(increments.finite), word_count(*setup.statistics_layout)), dtype=np.uint32)
    for i in range(len(rows)):
        try:
            rows[i] = to_words(take_rows(increments, np.array([i])).total(), center)
        except ValueError:
            continue
    return rows


def secure_groups(setup: SimSetup, updates: list[Update]) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Who runs the protocol together: every sender, or with ``federation.regions`` each region's
    senders (tagged with the region, for keys of their own)."""
    if setup.config.federation.regions == 1:
        return [((), np.arange(len(updates)))]
    regions = region_of(setup, np.array([u.client_id for u in updates], dtype=np.int64))
    return [((int(r),), np.flatnonzero(regions == r)) for r in np.unique(regions)]


def secure_aggregate(
    setup: SimSetup,
    state: SimState,
    updates: list[Update],
    on_time: np.ndarray,
    round_: int,
    increments: NormStats | None = None,
) -> tuple[SimState, RoundStats]:
    """Aggregate through secure aggregation: late updates, and updates with NaN or Inf values
    (which cannot be quantized: counted as rejected), drop out after sharing keys; the strategy
    receives one update, the mean of the others' sum. With regions, each region runs the protocol
    among its own senders and forwards the mean of its sum, weighted by its survivors, and the root's
    strategy averages them (it sees each region's sum, never a client's); a region left below its
    threshold forwards nothing, its in-time senders count as dropped, and the round as not recovered
    (its model still made from the regions that were). When no sum is recovered the round keeps the
    old model (no new version), and the bytes of a protocol that did not finish are not measured. With
    ``increments`` (the fleet's statistics under secure aggregation) each client's statistics are summed
    beside its update, and what the sums stand for is merged into the fleet's: the survivors' alone."""
    finite = np.array([np.isfinite(u.delta).all() for u in updates], dtype=bool)
    n_rejected = int((on_time & ~finite).sum())
    arrives = on_time & finite
    config = setup.config.pipeline.secure_aggregation
    budget = setup.config.federation.local_steps or 1
    words = None if increments is None else statistics_words(setup, increments, state.norm)
    norm = state.norm
    forwarded, results, ran, lost, stranded = [], [], [], 0, 0
    for tags, rows in secure_groups(setup, updates):
        members = [updates[i] for i in rows]
        threshold = secure_threshold(config, len(members))
        secured = (
            secure_sum_of(setup, members, arrives[rows], round_, *tags, words=None if words is None else words[rows])
            if len(members) >= threshold
            else None
        )
        if len(members) >= threshold:
            ran.append(threshold)
        if secured is None:
            lost += int(arrives[rows].any())
            stranded += int(arrives[rows].sum())  # sent in time, but their region has no sum
            continue
        mean, result = secured
        # the survivors' plain mean, weighted as that many step budgets (the deployed server's secure_update):
        # so the root's mean of regions is the flat round's mean of every survivor
        forwarded.append(Update(-1, state.version, mean, result.n_survivors * budget))  # no single client's
        results.append(result)
        if result.extra is not None:  # a sum that wrapped raises, naming why
            norm = norm.merge(from_words(result.extra, *setup.statistics_layout, state.norm))
    threshold = min(ran, default=secure_threshold(config, len(updates)))
    if not forwarded:
        return state, RoundStats(n_rejected=n_rejected, secure=SecureOutcome(threshold, False))
    params, strategy_state = setup.root_strategy.aggregate(state.strategy_state, state.params, forwarded)
    n, model, survivors = len(updates), model_bytes(setup, state.params), sum(r.n_survivors for r in results)
    up, down = sum(r.bytes_up for r in results), sum(r.bytes_down for r in results)
    traffic = Traffic(up, n * model + down, n, n, survivors * model)
    state = replace(state, params=params, strategy_state=strategy_state, version=state.version + 1, norm=norm)
    return state, RoundStats(
        n_updates=survivors,
        n_dropped=stranded,  # close_round adds the unavailable and the late
        n_rejected=n_rejected,
        traffic=traffic,
        secure=SecureOutcome(threshold, lost == 0),
    )


def present_clients(setup: SimSetup, round_: int) -> tuple[np.ndarray, np.ndarray]:
    """The clients ``round_`` samples, and those of them that are available."""
    sampled = sample_clients(setup, round_)
    return sampled, sampled[setup.fleet.available(sampled, round_, setup.rng(AVAILABILITY_STREAM, round_))]


class Trained(NamedTuple):
    """What training and aggregating a group of clients left: the updates, when each arrives,
    whether it was on time, and the statistics of what each client observed."""

    updates: list[Update]
    arrival: np.ndarray  # (n,) simulated seconds
    on_time: np.ndarray  # (n,) bool
    increments: NormStats | None = None  # one row per client; None without normalisation

    def merged_into(self, norm: NormStats | None) -> NormStats | None:
        """The fleet's statistics ``norm`` with the on-time clients' increments merged in (with
        personal statistics, every client's into its own)."""
        if self.increments is None:
            return norm
        ids = np.array([u.client_id for u in self.updates], dtype=np.int64)
        return norm.absorbed(ids, self.increments, self.on_time)


def train_and_aggregate(
    setup: SimSetup, state: SimState, present: np.ndarray, round_: int, tags: tuple
) -> tuple[SimState, RoundStats, Trained]:
    """Train ``present`` from ``state``'s global version, drop late updates, screen and aggregate (in
    the clear or through secure aggregation). The clients' normalisation statistics come back in
    ``Trained``, for the round to merge once every client has trained."""
    received, state, increments = train_clients(setup, state, present, tags)
    updates = [r.update for r in received]
    senders = np.array([u.client_id for u in updates], dtype=np.int64)  # all present but a lost shard's
    arrival = setup.fleet.duration(senders, np.array([u.env_steps for u in updates]))
    deadline = setup.config.fleet.deadline_s
    on_time = arrival <= deadline if deadline is not None else np.ones(len(updates), dtype=bool)
    steps = state.env_steps + sum(u.env_steps for u in updates)
    if setup.config.pipeline.secure_aggregation.enabled:
        in_sum = increments if setup.config.stats_in_secure_sum else None
        state, stats = secure_aggregate(setup, state, updates, on_time, round_, in_sum)
        if in_sum is not None:
            increments = None  # merged already: what the secure sums of the survivors' statistics stand for
    else:
        uplink = sum(r.uplink_bytes for r in received)
        if increments is not None and not state.norm.personal:  # each client's statistics travel beside its update
            uplink += len(received) * increments.wire_bytes
        state, stats = plain_aggregate(setup, state, updates, on_time, round_, uplink)
    return replace(state, env_steps=steps), stats, Trained(updates, arrival, on_time, increments)


def close_round(
    setup: SimSetup, state: SimState, stats: RoundStats, sampled: np.ndarray, present: np.ndarray, trained: Trained
) -> tuple[SimState, RoundStats]:
    """The round's simulated duration (its deadline when someone was late, away or lost with a
    worker), drops and training figures."""
    deadline = setup.config.fleet.deadline_s
    missing = len(trained.on_time) < len(sampled)
    late = deadline is not None and (missing or not trained.on_time.all())
    arrival = trained.arrival
    elapsed = deadline if late else float(arrival.max()) if len(arrival) else setup.config.fleet.retry_s
    updates = trained.updates
    loss = float(np.nanmean([u.metrics.loss for u in updates])) if updates else float("nan")
    episodes = sum(u.metrics.episodes for u in updates)
    n_dropped = len(sampled) - int(trained.on_time.sum()) + stats.n_dropped
    stats = replace(stats, n_sampled=len(sampled), n_dropped=n_dropped, train_loss=loss, episodes=episodes)
    return replace(state, sim_time_s=state.sim_time_s + elapsed), stats


def sync_round(setup: SimSetup, state: SimState, round_: int) -> tuple[SimState, RoundStats]:
    """Sample, drop the unavailable, train, drop late updates, screen, aggregate (in the clear
    or through secure aggregation)."""
    sampled, present = present_clients(setup, round_)
    state, stats, trained = train_and_aggregate(setup, state, present, round_, (round_,))
    state = replace(state, norm=trained.merged_into(state.norm))
    return close_round(setup, state, stats, sampled, present, trained)
