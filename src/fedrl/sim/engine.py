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

Asynchronous mode (``fleet.mode: async``, FedAsync / FedBuff): there is no barrier. Idle
available clients start training from the current global version at the current simulated
time; each update arrives after its client's compute and link time, is stamped with its
staleness, and every ``buffer_size`` arrivals make a new global version. A "round" here is the
time until ``fraction * n_clients`` updates have arrived, the same amount of client work as a
synchronous round, and ends with an evaluation. See ``sim/asynchronous.py``.

All randomness is derived from the run seed, the round and the shard (or wave), so a run --
and a run resumed from any checkpoint -- gives the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np

from fedrl.agents import Budget, LocalResult, evaluate, init_client_state, local_params, make_task, train_local
from fedrl.core.aggregation import screen
from fedrl.core.compress import dense, encode
from fedrl.core.pipeline import (
    ClientMessage, after_sending, central_mean, client_message, decode_stack, init_pipeline_state, secure_mean, spent_epsilon,
)
from fedrl.core.secagg import BelowThreshold, SecAggConfig, SecureSumResult
from fedrl.core.update import Update, stack_deltas
from fedrl.envs.base import EnvState, put_clients, reset, take_clients
from fedrl.sim.attacks import attack
from fedrl.sim.setup import (
    ATTACK_STREAM, AVAILABILITY_STREAM, EVAL_STREAM, NOISE_STREAM, PERSONAL_STREAM, PIPELINE_STREAM, SAMPLE_STREAM,
    SECAGG_STREAM, TRAIN_STREAM, Setup,
)


@dataclass(frozen=True)
class SimState:
    """Everything that changes from round to round (and goes into a checkpoint)."""

    round: int
    params: np.ndarray  # (d,) the global policy
    strategy_state: object
    env_state: EnvState  # every client's ongoing training episodes
    env_steps: int  # total env steps taken by all clients so far
    wall_s: float  # wall-clock seconds spent in rounds so far
    client_state: dict[str, np.ndarray] = field(default_factory=dict)  # learner state kept on each client (N, ...)
    sim_time_s: float = 0.0  # simulated fleet time
    version: int = 0  # number of global versions made
    inflight: dict[str, np.ndarray] = field(default_factory=dict)  # asynchronous mode: see sim/asynchronous.py
    pipeline_state: dict[str, np.ndarray] = field(default_factory=dict)  # update pipeline state kept on each client (N, ...)


@dataclass(frozen=True)
class Traffic:
    """Bytes on the wire in one round, each message's size measured as the length of its encoding."""

    uplink: int  # what the clients sent: their encoded updates (and SCAFFOLD's dense control deltas),
    # or with secure aggregation every message of the protocol
    downlink: int  # what the server sent: the dense global model (and SCAFFOLD's control) to each client
    # that trained, and secure aggregation's messages
    senders: int
    receivers: int
    dense_uplink: int  # the uplink had every update (secure aggregation: every masked input that arrived) been sent as float32

    @property
    def uplink_per_client(self) -> float:
        """Mean bytes sent per client that sent an update."""
        return self.uplink / self.senders if self.senders else float("nan")

    @property
    def downlink_per_client(self) -> float:
        """Mean bytes received per client that trained."""
        return self.downlink / self.receivers if self.receivers else float("nan")

    @property
    def compression_ratio(self) -> float:
        """Dense uplink bytes over the bytes actually sent (1 without compression)."""
        return self.dense_uplink / self.uplink if self.uplink else float("nan")


@dataclass(frozen=True)
class SecureOutcome:
    """Secure aggregation in one round: its threshold t, and whether the survivors' sum was
    recovered (when not, fewer than t clients were left and the round kept the old model)."""

    threshold: int
    recovered: bool


@dataclass(frozen=True)
class RoundStats:
    """What happened to the updates of a round."""

    n_sampled: int = 0  # clients asked to train (sync) or updates that arrived (async)
    n_updates: int = 0  # updates aggregated
    n_dropped: int = 0  # unavailable clients and late updates
    n_rejected: int = 0  # updates refused by screening (non-finite, malformed)
    mean_staleness: float = 0.0  # of the aggregated updates
    train_loss: float = float("nan")
    episodes: int = 0  # training episodes the clients finished this round (trajectories)
    traffic: Traffic | None = None  # bytes up and down; None where not measured (asynchronous rounds, failed secure sums)
    secure: SecureOutcome | None = None  # None without secure aggregation


@dataclass(frozen=True)
class RoundResult:
    """What one round produced; returns are ``None`` in rounds without evaluation."""

    round: int
    env_steps: int
    wall_s: float
    sim_time_s: float
    stats: RoundStats
    client_returns: np.ndarray | None  # (n_clients,) mean greedy return per client
    personalized_returns: np.ndarray | None
    epsilon: float = float("inf")  # DP epsilon spent so far (at pipeline.dp.delta); inf without DP

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
    """Round 0: initial policy, fresh strategy state, fresh episodes and learner state on every client."""
    params = setup.initial_params()
    n = setup.config.federation.n_clients
    env_state, _ = reset(setup.family, setup.env_params, setup.config.learner.n_envs, setup.rng(TRAIN_STREAM, 0))
    client_state = init_client_state(setup.config.learner, setup.net, n, setup.strategy.uses_control_variates)
    pipeline_state = init_pipeline_state(setup.config.pipeline, n, setup.net.spec.dim)
    return SimState(0, params, setup.strategy.init(params), env_state, 0, 0.0, client_state, pipeline_state=pipeline_state)


def take_rows(client_state: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The learner state of the clients at ``rows``."""
    return {k: v[rows] for k, v in client_state.items()}


def put_rows(client_state: dict[str, np.ndarray], rows: np.ndarray, part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of ``client_state`` with the clients at ``rows`` replaced by ``part``."""
    out = {}
    for key, whole in client_state.items():
        whole = whole.copy()
        whole[rows] = part[key]
        out[key] = whole
    return out


def clients_per_round(setup: Setup) -> int:
    """``fraction * n_clients``, halves rounded up, at least 1."""
    return setup.config.federation.clients_per_round


def sample_clients(setup: Setup, round_: int) -> np.ndarray:
    """The sorted indices of the clients asked to take part in ``round_``: ``clients_per_round``
    of them, or under central DP each client independently with probability ``fraction`` (Poisson
    sampling, the sampling its accountant assumes)."""
    rng, fed = setup.rng(SAMPLE_STREAM, round_), setup.config.federation
    if setup.config.pipeline.dp.mode == "central":
        return np.flatnonzero(rng.random(fed.n_clients) < fed.fraction)
    return np.sort(rng.choice(fed.n_clients, size=clients_per_round(setup), replace=False))


def shards(clients: np.ndarray, shard_size: int) -> list[np.ndarray]:
    """Split client indices into consecutive shards of at most ``shard_size``."""
    return [clients[i : i + shard_size] for i in range(0, len(clients), shard_size)]


def server_control(setup: Setup, strategy_state) -> np.ndarray | None:
    """SCAFFOLD's global control variate, sent with the model; None for other strategies."""
    return strategy_state.c if setup.strategy.uses_control_variates else None


def train_shard(setup: Setup, state: SimState, rows: np.ndarray, rng: np.random.Generator) -> LocalResult:
    """Local training of one shard of clients from the global params; pure apart from time."""
    task = make_task(
        setup.net, setup.family, setup.env_params[rows], take_clients(state.env_state, rows), state.params,
        setup.strategy.prox_mu, rng, client_state=take_rows(state.client_state, rows),
        server_control=server_control(setup, state.strategy_state),
    )
    return train_local(setup.config.learner, task, setup.budget)


def to_updates(setup: Setup, rows: np.ndarray, result: LocalResult, params: np.ndarray, version: int, rng) -> list[Update]:
    """One ``Update`` per client of a shard; a malicious client's delta is replaced by its attack."""
    updates = []
    for i, c in enumerate(rows):
        delta = (result.params[i] - params).astype(np.float32)
        if setup.malicious[c]:
            delta = attack(setup.config.attack, delta, setup.random_policy - params, rng)
        control = result.control_delta[i] if result.control_delta is not None else None
        updates.append(Update(int(c), version, delta, int(result.env_steps[i]), {"loss": float(result.loss[i]), "episodes": float(result.episodes[i])}, control))
    return updates


def client_messages(setup: Setup, pipeline_state: dict[str, np.ndarray], updates: list[Update], tags: tuple
                    ) -> tuple[list[ClientMessage], dict[str, np.ndarray]]:
    """Each update through the client side of the pipeline, with its client's error-feedback
    residual and its own random stream; and the pipeline state after sending."""
    clients = np.array([u.client_id for u in updates], dtype=np.int64)
    residuals = pipeline_state.get("residual")
    messages = []
    for u in updates:
        residual = None if residuals is None else residuals[u.client_id]
        rng = setup.rng(PIPELINE_STREAM, *tags, u.client_id)
        messages.append(client_message(setup.config.pipeline, u.delta, residual, rng, setup.net.spec.sizes))
    return messages, after_sending(pipeline_state, clients, messages)


def transmit(setup: Setup, pipeline_state: dict[str, np.ndarray], updates: list[Update], tags: tuple) -> tuple[list[Update], dict[str, np.ndarray]]:
    """Send ``updates`` through the client side of the pipeline and decode them as the server
    does; returns the updates as the server sees them, each with its measured size in
    ``metrics["uplink_bytes"]``, and the pipeline state after sending."""
    messages, pipeline_state = client_messages(setup, pipeline_state, updates, tags)
    received = decode_stack([m.payload for m in messages], setup.net.spec.dim)
    sent = []
    for u, m, delta in zip(updates, messages, received):
        control_bytes = len(encode(dense(u.control_delta))) if u.control_delta is not None else 0
        sent.append(replace(u, delta=delta, metrics={**u.metrics, "uplink_bytes": float(len(m.payload) + control_bytes)}))
    return sent, pipeline_state


def train_clients(setup: Setup, state: SimState, clients: np.ndarray, tags: tuple, send: Callable = transmit
                  ) -> tuple[list, SimState]:
    """Train ``clients`` from ``state``'s global version, shard by shard; returns what ``send``
    makes of their updates (attacks applied) -- by default the updates as the server sees them
    after the pipeline -- and the state with their env, learner and pipeline state advanced."""
    updates: list = []
    for i, rows in enumerate(shards(clients, setup.config.federation.shard_size)):
        result = train_shard(setup, state, rows, setup.rng(TRAIN_STREAM, *tags, i))
        raw = to_updates(setup, rows, result, state.params, state.version, setup.rng(ATTACK_STREAM, *tags, i))
        sent, pipeline_state = send(setup, state.pipeline_state, raw, tags)
        updates += sent
        state = replace(
            state,
            env_state=put_clients(state.env_state, rows, result.env_state),
            client_state=put_rows(state.client_state, rows, result.client_state),
            pipeline_state=pipeline_state,
        )
    return updates, state


def central_update(setup: Setup, state: SimState, updates: list[Update]) -> Update:
    """Under central DP, the one update the strategy sees: the noised mean of the round's deltas
    over the expected number of clients (client id -1: no single client's)."""
    fed = setup.config.federation
    stack = stack_deltas(updates) if updates else np.zeros((0, setup.net.spec.dim), dtype=np.float32)
    mean = central_mean(setup.config.pipeline, stack, fed.fraction * fed.n_clients, setup.rng(NOISE_STREAM, state.version))
    return Update(-1, state.version, mean, sum(u.env_steps for u in updates))


def aggregate(setup: Setup, state: SimState, updates: list[Update]) -> tuple[SimState, int, float]:
    """Screen ``updates`` and aggregate the accepted ones into a new version; returns the
    state, the number rejected and the mean staleness of the accepted ones."""
    screened = screen(updates, setup.net.spec.dim)
    accepted = screened.accepted
    staleness = float(np.mean([state.version - u.base_version for u in accepted])) if accepted else 0.0
    if setup.config.pipeline.dp.mode == "central":
        accepted = [central_update(setup, state, accepted)]
    params, strategy_state = setup.strategy.aggregate(state.strategy_state, state.params, accepted)
    return replace(state, params=params, strategy_state=strategy_state, version=state.version + 1), len(screened.rejected), staleness


def model_bytes(setup: Setup, params: np.ndarray) -> int:
    """What the server sends each client that trains: the dense float32 model (and SCAFFOLD's control)."""
    return len(encode(dense(params))) * (2 if setup.strategy.uses_control_variates else 1)


def measure_traffic(setup: Setup, params: np.ndarray, receivers: int, updates: list[Update]) -> Traffic:
    """A round's bytes: the global model (dense float32) to each of ``receivers``, and the
    updates' measured sizes back (late ones too: they were sent)."""
    model = model_bytes(setup, params)
    uplink = int(sum(u.metrics["uplink_bytes"] for u in updates))
    return Traffic(uplink, receivers * model, len(updates), receivers, len(updates) * model)


def plain_aggregate(setup: Setup, state: SimState, updates: list[Update], on_time: np.ndarray) -> tuple[SimState, RoundStats]:
    """Screen the on-time ``updates`` and hand them to the strategy; the stats of what became of them."""
    kept = [u for u, ok in zip(updates, on_time) if ok]
    traffic = measure_traffic(setup, state.params, len(updates), updates)
    state, n_rejected, _ = aggregate(setup, state, kept)
    return state, RoundStats(n_updates=len(kept) - n_rejected, n_rejected=n_rejected, traffic=traffic)


def secure_threshold(config: SecAggConfig, n_clients: int) -> int:
    """t for a roster of ``n_clients``: at least 2, and above ``n_clients`` when no sum is possible."""
    return config.threshold if isinstance(config.threshold, int) else config.threshold_for(max(n_clients, 2))


def secure_sum_of(setup: Setup, state: SimState, updates: list[Update], arrives: np.ndarray,
                  round_: int) -> tuple[np.ndarray, SecureSumResult] | None:
    """The mean the strategy receives and the protocol's record, with the clients that sent
    ``updates`` as the roster and those not in ``arrives`` dropping after sharing their keys;
    None when fewer than t of them arrive."""
    pipeline, fed = setup.config.pipeline, setup.config.federation
    stack = np.where(arrives[:, None], stack_deltas(updates), np.float32(0))  # a dropped row is never read
    try:
        return secure_mean(pipeline, stack, ~arrives, fed.fraction * fed.n_clients, setup.rng(SECAGG_STREAM, round_),
                           setup.rng(NOISE_STREAM, state.version))
    except BelowThreshold:
        return None


def secure_aggregate(setup: Setup, state: SimState, updates: list[Update], on_time: np.ndarray,
                     round_: int) -> tuple[SimState, RoundStats]:
    """Aggregate through secure aggregation: late updates, and updates with NaN or Inf values
    (which cannot be quantized: counted as rejected), drop out after sharing keys; the strategy
    receives one update, the mean of the others' sum. Below the threshold the round keeps the
    old model (no new version) and its traffic is not measured."""
    finite = np.array([np.isfinite(u.delta).all() for u in updates], dtype=bool)
    n_rejected = int((on_time & ~finite).sum())
    arrives = on_time & finite
    threshold = secure_threshold(setup.config.pipeline.secure_aggregation, len(updates))
    secured = secure_sum_of(setup, state, updates, arrives, round_) if len(updates) >= threshold else None
    if secured is None:
        return state, RoundStats(n_rejected=n_rejected, secure=SecureOutcome(threshold, False))
    mean, result = secured
    steps = sum(u.env_steps for u, ok in zip(updates, arrives) if ok)
    update = Update(-1, state.version, mean, steps)  # no single client's, as under central DP
    params, strategy_state = setup.strategy.aggregate(state.strategy_state, state.params, [update])
    n, model = len(updates), model_bytes(setup, state.params)
    traffic = Traffic(result.bytes_up, n * model + result.bytes_down, n, n, result.n_survivors * model)
    state = replace(state, params=params, strategy_state=strategy_state, version=state.version + 1)
    return state, RoundStats(n_updates=result.n_survivors, n_rejected=n_rejected, traffic=traffic,
                             secure=SecureOutcome(result.threshold, True))


def sync_round(setup: Setup, state: SimState, round_: int) -> tuple[SimState, RoundStats]:
    """Sample, drop the unavailable, train, drop late updates, screen, aggregate (in the clear
    or through secure aggregation)."""
    fleet = setup.fleet
    sampled = sample_clients(setup, round_)
    present = sampled[fleet.available(sampled, round_, setup.rng(AVAILABILITY_STREAM, round_))]
    updates, state = train_clients(setup, state, present, (round_,))
    arrival = fleet.duration(present, np.array([u.env_steps for u in updates]))
    deadline = setup.config.fleet.deadline_s
    on_time = arrival <= deadline if deadline is not None else np.ones(len(updates), dtype=bool)
    late = deadline is not None and (len(present) < len(sampled) or not on_time.all())
    elapsed = deadline if late else float(arrival.max()) if len(arrival) else setup.config.fleet.retry_s
    steps = state.env_steps + sum(u.env_steps for u in updates)
    if setup.config.pipeline.secure_aggregation.enabled:
        state, stats = secure_aggregate(setup, state, updates, on_time, round_)
    else:
        state, stats = plain_aggregate(setup, state, updates, on_time)
    loss = float(np.nanmean([u.metrics["loss"] for u in updates])) if updates else float("nan")
    episodes = int(sum(u.metrics["episodes"] for u in updates))
    n_dropped = len(sampled) - int(on_time.sum())
    stats = replace(stats, n_sampled=len(sampled), n_dropped=n_dropped, train_loss=loss, episodes=episodes)
    return replace(state, env_steps=steps, sim_time_s=state.sim_time_s + elapsed), stats


def acting_params(setup: Setup, params: np.ndarray, client_state: dict[str, np.ndarray]) -> np.ndarray:
    """What each client acts with: the global vector, or with partial federation the global
    federated part joined to each client's personal part ``(N, d)``."""
    if setup.federated.all():
        return params
    return local_params(setup.config.learner, setup.net, params, client_state, setup.config.federation.n_clients)


def evaluate_clients(setup: Setup, params: np.ndarray) -> np.ndarray:
    """Mean return per client of ``params`` (shared ``(d,)`` or per-client ``(N, d)``) on
    every client's environment, with held-out evaluation seeds."""
    cfg = setup.config.eval
    seed = int(setup.rng(EVAL_STREAM).integers(2**31))
    returns = evaluate(setup.net, params, setup.family, setup.env_params, cfg.episodes, seed, cfg.greedy)
    return returns.mean(axis=1)


def personalized_returns(setup: Setup, state: SimState, round_: int) -> np.ndarray:
    """Each client fine-tunes the global policy for the configured steps on its own
    environment (from a copy of what it keeps), then is evaluated like the global policy."""
    steps = setup.config.personalization.steps
    tuned = []
    for i, rows in enumerate(shards(np.arange(setup.config.federation.n_clients), setup.config.federation.shard_size)):
        rng = setup.rng(PERSONAL_STREAM, round_, i)
        env_state, _ = reset(setup.family, setup.env_params[rows], setup.config.learner.n_envs, rng)
        task = make_task(setup.net, setup.family, setup.env_params[rows], env_state, state.params, 0.0, rng,
                         client_state=take_rows(state.client_state, rows))
        result = train_local(setup.config.learner, task, Budget(steps=steps))
        tuned.append(local_params(setup.config.learner, setup.net, result.params, result.client_state, len(rows)))
    return evaluate_clients(setup, np.concatenate(tuned))


def run_round(setup: Setup, state: SimState) -> tuple[RoundResult, SimState]:
    """One round (synchronous, or an asynchronous period of the same client work), then evaluation."""
    from fedrl.sim.asynchronous import async_round  # imported here: that module builds on this one

    started = time.perf_counter()
    round_ = state.round + 1
    step = async_round if setup.config.fleet.mode == "async" else sync_round
    state, stats = step(setup, state, round_)
    cfg = setup.config
    evaluate_now = round_ % cfg.eval.every == 0 or round_ == cfg.federation.rounds
    client_returns = evaluate_clients(setup, acting_params(setup, state.params, state.client_state)) if evaluate_now else None
    personal = personalized_returns(setup, state, round_) if evaluate_now and cfg.personalization.steps else None
    state = replace(state, round=round_, wall_s=state.wall_s + time.perf_counter() - started)
    spent = spent_epsilon(cfg.pipeline, cfg.federation.fraction, round_, state.pipeline_state)
    result = RoundResult(round_, state.env_steps, state.wall_s, state.sim_time_s, stats, client_returns, personal, spent)
    return result, state


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
