"""Clustered federation (IFCA): K global models, and each client trains the one that suits it.

Ghosh, Chung, Yin and Ramchandran, "An Efficient Framework for Clustered Federated Learning",
NeurIPS 2020. A fleet with several kinds of device (a motor wired the other way round, another
floor plan) need not be forced into one policy: each round every sampled client estimates which
model fits it best -- here by playing ``federation.cluster_probe_episodes`` with each model, the
same episodes for every model, since a client's loss is minus its return -- trains that one from
its current version and sends its update to that model's average; each model has its own strategy
state. The models start from different initialisations, so they can part. A client acts with the
model it chose last; a held-out client chooses the same way, on probe episodes apart from the ones
it is then evaluated on.

``SimState.params`` holds the model most clients chose (what a run's ``final_policy`` and its
callbacks show); ``Clusters`` holds all of them, checkpointed, and every model is saved at the end.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedrl.core.normstats import NormStats
from fedrl.experiment.aggregation import CHOOSE_TAG, HELDOUT_EPISODES_TAG, mean_returns
from fedrl.experiment.streams import INIT_STREAM
from fedrl.sim.setup import SimSetup
from fedrl.sim.state import Clusters, RoundStats, SimState, Traffic
from fedrl.sim.sync import Trained, close_round, present_clients, train_and_aggregate


def choose(
    setup: SimSetup, params: np.ndarray, env_params: np.ndarray, norm: NormStats | None, *tags: int
) -> np.ndarray:
    """The model ``(n,)`` each client of ``env_params`` scores best with, over the same
    ``cluster_probe_episodes`` for every model (seeded by ``tags``)."""
    episodes = setup.config.federation.cluster_probe_episodes
    returns = np.stack([mean_returns(setup, p, env_params, episodes, CHOOSE_TAG, *tags, norm=norm) for p in params])
    return np.argmax(returns, axis=0).astype(np.int64)


def initial_clusters(setup: SimSetup, params: np.ndarray, norm: NormStats | None) -> Clusters | None:
    """Round 0 of a clustered run: model 0 is ``params``, each other model its own initialisation,
    and every client's first choice; None without clustering."""
    k = setup.config.federation.clusters
    if k == 1:
        return None
    inits = [setup.net.initial_params(seed=int(setup.rng(INIT_STREAM, i).integers(2**31))) for i in range(1, k)]
    models = np.stack([params, *inits]).astype(np.float32)
    states = tuple(setup.strategy.init(m) for m in models)
    return Clusters(models, states, choose(setup, models, setup.env_params, norm, 0))


def with_clusters(state: SimState, clusters: Clusters) -> SimState:
    """``state`` holding ``clusters``, its global params and strategy state the largest model's."""
    top = clusters.largest()
    return replace(state, clusters=clusters, params=clusters.params[top], strategy_state=clusters.strategy_states[top])


def clustered_round(setup: SimSetup, state: SimState, round_: int) -> tuple[SimState, RoundStats]:
    """Sample, drop the unavailable, let each present client choose a model, then train and
    aggregate each model on the clients that chose it; one new version when any model changed."""
    clusters, version = state.clusters, state.version
    sampled, present = present_clients(setup, round_)
    choice = choose(setup, clusters.params, setup.env_params[present], state.norm, round_)
    models, states, parts = clusters.params.copy(), list(clusters.strategy_states), []
    for k in range(len(models)):
        members = present[choice == k]
        if not len(members):
            continue
        state = replace(state, params=models[k], strategy_state=states[k])
        state, stats, trained = train_and_aggregate(setup, state, members, round_, (round_, k))
        models[k], states[k] = state.params, state.strategy_state
        parts.append((stats, trained))
    norm = state.norm  # every model's clients started from the fleet's statistics; now merge, model by model
    for _, trained in parts:
        norm = trained.merged_into(norm)
    state = replace(state, norm=norm)
    assignment = clusters.assignment.copy()
    assignment[present] = choice
    state = with_clusters(state, Clusters(models, tuple(states), assignment))
    state = replace(state, version=version + int(state.version != version))
    return close_round(setup, state, _sum_stats([s for s, _ in parts]), sampled, present, _joined(parts))


def _joined(parts: list[tuple[RoundStats, Trained]]) -> Trained:
    """The models' trained groups as one."""
    updates = [u for _, t in parts for u in t.updates]
    arrival = np.concatenate([t.arrival for _, t in parts]) if parts else np.zeros(0)
    on_time = np.concatenate([t.on_time for _, t in parts]) if parts else np.zeros(0, dtype=bool)
    return Trained(updates, arrival, on_time)


def _sum_stats(parts: list[RoundStats]) -> RoundStats:
    """Updates, rejections and bytes of the models' aggregations added up."""
    traffic = None
    if parts and all(s.traffic is not None for s in parts):
        names = ("uplink", "downlink", "senders", "receivers", "dense_uplink")
        traffic = Traffic(*(sum(getattr(s.traffic, n) for s in parts) for n in names))
    return RoundStats(
        n_updates=sum(s.n_updates for s in parts), n_rejected=sum(s.n_rejected for s in parts), traffic=traffic
    )


def heldout_choice(setup: SimSetup, clusters: Clusters, env_params: np.ndarray, norm: NormStats | None) -> np.ndarray:
    """The model each held-out client (physics ``env_params``) acts with: its best on probe episodes
    of its own, apart from the evaluation's."""
    return clusters.params[choose(setup, clusters.params, env_params, norm, 0, HELDOUT_EPISODES_TAG)]
