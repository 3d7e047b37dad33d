"""The simulation engine: federated rounds over a whole fleet on one machine.

Synchronous mode: each round samples a fraction of the clients; those available train in
shards (one batched learner call per shard, so a later backend can place shards on workers);
malicious clients replace their update; updates that would arrive after the round deadline are
dropped; the rest are screened (non-finite or malformed updates are rejected, never averaged)
and aggregated by the strategy; the new global policy is evaluated on every client's
environment. Every update passes through the update pipeline (``fedrl.core.pipeline``: clip,
compress, DP noise) on its way: the client side makes the bytes it would send, whose length is
the round's measured uplink, and the server decodes them; with central DP the clients are
Poisson-sampled and the strategy receives one noised mean. With secure aggregation the clients
that trained run the protocol (``fedrl.core.secagg``) on their updates, those whose update is
late drop out after sharing their keys, and the strategy receives the mean of the survivors' sum;
the bytes are the protocol's, and a round left below the threshold keeps the old model.

Asynchronous mode (FedAsync / FedBuff, ``ExperimentConfig.asynchronous``): there is no barrier. Idle
available clients start training from the current global version at the current simulated
time; each update arrives after its client's compute and link time, is stamped with its
staleness, and every ``buffer_size`` arrivals make a new global version. A "round" here is the
time until ``fraction * n_clients`` updates have arrived, the same amount of client work as a
synchronous round, and ends with an evaluation. See ``fedrl.sim.sync`` and ``fedrl.sim.asynchronous``.

Evaluation: every client (or a fresh sample of ``eval.clients`` per evaluation, whose mean then
comes with a 95 % interval for the fleet's), ``eval.episodes`` each. An evaluation that reaches the
target is checked on ``eval.confirm_episodes`` fresh episodes per client (of a fresh sample, when
sampling), and the run stops only when that confirms it.

All randomness is derived from the run seed, the round and the shard (or wave), so a run --
and a run resumed from any checkpoint -- gives the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from fedrl.agents import Budget, init_client_state, local_params, make_task, train_local
from fedrl.agents.normalize import init_stats
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import init_pipeline_state, spent_epsilon
from fedrl.core.rows import take_rows
from fedrl.envs.base import reset
from fedrl.experiment.aggregation import (
    CONFIRM_SAMPLE_TAG,
    client_returns,
    confirmed_returns,
    eval_sample,
    mean_returns,
)
from fedrl.experiment.streams import PERSONAL_STREAM, TRAIN_STREAM
from fedrl.sim.asynchronous import async_round
from fedrl.sim.clients import shards
from fedrl.sim.clusters import clustered_round, initial_clusters, with_clusters
from fedrl.sim.setup import SimSetup
from fedrl.sim.state import RoundResult, SimState
from fedrl.sim.sync import sync_round


def initial_state(setup: SimSetup) -> SimState:
    """Round 0: initial policy, fresh strategy state, fresh episodes and learner state on every client."""
    params = setup.initial_params()
    n = setup.config.federation.n_clients
    env_state, _ = reset(setup.family, setup.env_params, setup.config.learner.n_envs, setup.rng(TRAIN_STREAM, 0))
    client_state = init_client_state(setup.config.learner, setup.net, n, setup.strategy.uses_control_variates)
    pipeline_state = init_pipeline_state(setup.config.pipeline, n, setup.net.spec.dim)
    norm = init_stats(setup.config.learner.normalize, setup.family.obs_dim, n)
    state = SimState(
        0,
        params,
        setup.strategy.init(params),
        env_state,
        0,
        0.0,
        client_state,
        pipeline_state=pipeline_state,
        norm=norm,
    )
    clusters = initial_clusters(setup, params, norm)
    return state if clusters is None else with_clusters(state, clusters)


def acting_params(setup: SimSetup, state: SimState) -> np.ndarray:
    """What each client acts with: the global vector (with clustered federation, the model it
    chose, ``(N, d)``), or with partial federation that joined to each client's personal part."""
    params = state.params if state.clusters is None else state.clusters.acting()
    client_state = state.client_state
    if setup.federated.all():
        return params
    return local_params(setup.config.learner, setup.net, params, client_state, setup.config.federation.n_clients)


def personalized_returns(setup: SimSetup, state: SimState, round_: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Each client (of ``ids``; default all) fine-tunes the global policy for the configured steps
    on its own environment (from a copy of what it keeps), then is evaluated like the global policy,
    normalising by the fleet's statistics (or its own) with what it added while fine-tuning."""
    steps = setup.config.personalization.steps
    chosen = np.arange(setup.config.federation.n_clients) if ids is None else ids
    tuned, own = [], []
    for i, rows in enumerate(shards(chosen, setup.config.federation.shard_size)):
        rng = setup.rng(PERSONAL_STREAM, round_, i)
        env_state, _ = reset(setup.family, setup.env_params[rows], setup.config.learner.n_envs, rng)
        task = make_task(
            setup.net,
            setup.family,
            setup.env_params[rows],
            env_state,
            state.params,
            0.0,
            rng,
            client_state=take_rows(state.client_state, rows),
            norm=None if state.norm is None else state.norm.of_clients(rows),
        )
        result = train_local(setup.config.learner, task, Budget(steps=steps))
        tuned.append(local_params(setup.config.learner, setup.net, result.params, result.client_state, len(rows)))
        if result.norm is not None:  # each client keeps the statistics it added while fine-tuning
            own.append(state.norm.rows_of(rows).merge(result.norm))
    norm = NormStats.concat(own) if own else None
    return mean_returns(setup, np.concatenate(tuned), setup.env_params[chosen], setup.config.eval.episodes, norm=norm)


def run_round(setup: SimSetup, state: SimState) -> tuple[RoundResult, SimState]:
    """One round (synchronous, or an asynchronous period of the same client work), then evaluation."""
    started = time.perf_counter()
    round_ = state.round + 1
    step = async_round if setup.config.asynchronous else sync_round if state.clusters is None else clustered_round
    state, stats = step(setup, state, round_)
    cfg = setup.config
    evaluate_now = round_ % cfg.eval.every == 0 or round_ == cfg.federation.rounds
    ids = returns = confirmed = personal = None
    if evaluate_now:
        acting = acting_params(setup, state)
        ids = eval_sample(setup, round_)
        returns = client_returns(setup, acting, ids, state.norm)
        if cfg.eval.confirm_episodes and _crossed(setup, float(np.mean(returns))):
            sample = eval_sample(setup, round_, CONFIRM_SAMPLE_TAG)
            confirmed = confirmed_returns(setup, acting, round_, sample, state.norm)
        if cfg.personalization.steps:
            personal = personalized_returns(setup, state, round_, ids)
    state = replace(state, round=round_, wall_s=state.wall_s + time.perf_counter() - started)
    spent = spent_epsilon(cfg.pipeline, cfg.federation.fraction, round_, state.pipeline_state.most_participation)
    result = RoundResult(
        round_,
        state.env_steps,
        state.wall_s,
        state.sim_time_s,
        stats,
        returns,
        personal,
        spent,
        confirmed,
        ids,
        cfg.federation.n_clients,
    )
    return result, state


def _crossed(setup: SimSetup, mean_return: float) -> bool:
    """Whether early stopping is on and ``mean_return`` reaches the target."""
    target = setup.target_return
    return setup.config.federation.stop_at_target and target is not None and mean_return >= target


def is_solved(setup: SimSetup, result: RoundResult) -> bool:
    """Whether the run may stop at ``result``: its evaluation reached the target (and early
    stopping is on), and, with ``eval.confirm_episodes``, the larger evaluation confirmed it."""
    if result.client_returns is None or not _crossed(setup, result.global_mean_return):
        return False
    return not setup.config.eval.confirm_episodes or _crossed(setup, result.confirmed_return)


def run_rounds(setup: SimSetup, state: SimState) -> Iterator[tuple[RoundResult, SimState]]:
    """Rounds from ``state`` until the round limit or the target return."""
    while state.round < setup.config.federation.rounds:
        result, state = run_round(setup, state)
        yield result, state
        if is_solved(setup, result):
            return
