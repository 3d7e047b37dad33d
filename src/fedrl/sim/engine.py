"""The simulation engine: synchronous federated rounds over a whole fleet on one machine.

Each round samples a fraction of the clients, trains them in shards (one batched learner
call per shard, so a later backend can place shards on workers), turns the results into
``Update`` records, aggregates them with the strategy, and evaluates the new global policy on
every client's environment. All randomness is derived from the run seed, the round and the
shard, so a run -- and a run resumed from any checkpoint -- gives the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from fedrl.agents import Budget, LocalResult, evaluate, make_task, train_local
from fedrl.core.update import Update
from fedrl.envs.base import EnvState, put_clients, reset, take_clients
from fedrl.sim.setup import EVAL_STREAM, PERSONAL_STREAM, SAMPLE_STREAM, TRAIN_STREAM, Setup


@dataclass(frozen=True)
class SimState:
    """Everything that changes from round to round (and goes into a checkpoint)."""

    round: int
    params: np.ndarray  # (d,) the global policy
    strategy_state: object
    env_state: EnvState  # every client's ongoing training episodes
    env_steps: int  # total env steps taken by all clients so far
    wall_s: float  # wall-clock seconds spent in rounds so far


@dataclass(frozen=True)
class RoundResult:
    """What one round produced; returns are ``None`` in rounds without evaluation."""

    round: int
    env_steps: int
    wall_s: float
    n_updates: int
    train_loss: float
    client_returns: np.ndarray | None  # (n_clients,) mean greedy return per client
    personalized_returns: np.ndarray | None

    @property
    def global_mean_return(self) -> float:
        """Mean over clients of the global policy's return."""
        return float(np.mean(self.client_returns)) if self.client_returns is not None else float("nan")

    @property
    def worst_client_return(self) -> float:
        """The lowest client's return under the global policy."""
        return float(np.min(self.client_returns)) if self.client_returns is not None else float("nan")

    @property
    def p10_client_return(self) -> float:
        """The 10th percentile of client returns under the global policy."""
        return float(np.percentile(self.client_returns, 10)) if self.client_returns is not None else float("nan")


def initial_state(setup: Setup) -> SimState:
    """Round 0: initial policy, fresh strategy state, fresh episodes on every client."""
    params = setup.initial_params()
    n_envs = setup.config.learner.n_envs
    env_state, _ = reset(setup.family, setup.env_params, n_envs, setup.rng(TRAIN_STREAM, 0))
    return SimState(0, params, setup.strategy.init(params), env_state, 0, 0.0)


def sample_clients(setup: Setup, round_: int) -> np.ndarray:
    """The sorted indices of the clients that take part in ``round_``."""
    n = setup.config.federation.n_clients
    k = max(1, round(setup.config.federation.fraction * n))
    chosen = setup.rng(SAMPLE_STREAM, round_).choice(n, size=k, replace=False)
    return np.sort(chosen)


def shards(clients: np.ndarray, shard_size: int) -> list[np.ndarray]:
    """Split client indices into consecutive shards of at most ``shard_size``."""
    return [clients[i : i + shard_size] for i in range(0, len(clients), shard_size)]


def train_shard(setup: Setup, params: np.ndarray, rows: np.ndarray, env_state: EnvState, rng) -> LocalResult:
    """Local training of one shard of clients from the global ``params``; pure apart from time."""
    task = make_task(
        setup.net, setup.family, setup.env_params[rows], env_state, params, setup.strategy.prox_mu, rng
    )
    return train_local(setup.config.learner, task, setup.budget)


def to_updates(rows: np.ndarray, result: LocalResult, params: np.ndarray, version: int) -> list[Update]:
    """One ``Update`` per client of a shard: its delta from the global params and step count."""
    return [
        Update(int(c), version, (result.params[i] - params).astype(np.float32), int(result.env_steps[i]),
               {"loss": float(result.loss[i])})
        for i, c in enumerate(rows)
    ]


def personalized_returns(setup: Setup, params: np.ndarray, round_: int) -> np.ndarray:
    """Each client fine-tunes the global policy for the configured steps on its own
    environment, then is evaluated like the global policy."""
    steps = setup.config.personalization.steps
    tuned = []
    for i, rows in enumerate(shards(np.arange(setup.config.federation.n_clients), setup.config.federation.shard_size)):
        rng = setup.rng(PERSONAL_STREAM, round_, i)
        state, _ = reset(setup.family, setup.env_params[rows], setup.config.learner.n_envs, rng)
        task = make_task(setup.net, setup.family, setup.env_params[rows], state, params, 0.0, rng)
        tuned.append(train_local(setup.config.learner, task, Budget(steps=steps)).params)
    return evaluate_clients(setup, np.concatenate(tuned))


def evaluate_clients(setup: Setup, params: np.ndarray) -> np.ndarray:
    """Mean return per client of ``params`` (shared ``(d,)`` or per-client ``(N, d)``) on
    every client's environment, with held-out evaluation seeds."""
    cfg = setup.config.eval
    seed = int(setup.rng(EVAL_STREAM).integers(2**31))
    returns = evaluate(setup.net, params, setup.family, setup.env_params, cfg.episodes, seed, cfg.greedy)
    return returns.mean(axis=1)


def run_round(setup: Setup, state: SimState) -> tuple[RoundResult, SimState]:
    """One synchronous round: sample, train shards, aggregate, evaluate."""
    started = time.perf_counter()
    round_ = state.round + 1
    updates: list[Update] = []
    env_state = state.env_state
    for i, rows in enumerate(shards(sample_clients(setup, round_), setup.config.federation.shard_size)):
        result = train_shard(setup, state.params, rows, take_clients(env_state, rows), setup.rng(TRAIN_STREAM, round_, i))
        env_state = put_clients(env_state, rows, result.env_state)
        updates += to_updates(rows, result, state.params, version=state.round)
    params, strategy_state = setup.strategy.aggregate(state.strategy_state, state.params, updates)
    cfg = setup.config
    evaluate_now = round_ % cfg.eval.every == 0 or round_ == cfg.federation.rounds
    client_returns = evaluate_clients(setup, params) if evaluate_now else None
    personal = personalized_returns(setup, params, round_) if evaluate_now and cfg.personalization.steps else None
    steps = state.env_steps + sum(u.env_steps for u in updates)
    wall = state.wall_s + time.perf_counter() - started
    loss = float(np.nanmean([u.metrics["loss"] for u in updates])) if updates else float("nan")
    result = RoundResult(round_, steps, wall, len(updates), loss, client_returns, personal)
    return result, SimState(round_, params, strategy_state, env_state, steps, wall)


def is_solved(setup: Setup, result: RoundResult) -> bool:
    """Whether the global mean return reached the target (and early stopping is on)."""
    return (
        setup.config.federation.stop_at_target
        and result.client_returns is not None
        and result.global_mean_return >= setup.target_return
    )


def run_rounds(setup: Setup, state: SimState) -> Iterator[tuple[RoundResult, SimState]]:
    """Rounds from ``state`` until the round limit or the target return."""
    while state.round < setup.config.federation.rounds:
        result, state = run_round(setup, state)
        yield result, state
        if is_solved(setup, result):
            return
