"""The simulator's records: the state carried from round to round, and what a round reports."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from fedrl.agents import ClientState
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import PipelineState
from fedrl.core.rows import take_rows
from fedrl.core.update import Update
from fedrl.envs.base import EnvState
from fedrl.experiment.aggregation import aggregate_round
from fedrl.experiment.setup import Setup


@dataclass(frozen=True)
class SimState:
    """Everything that changes from round to round (and goes into a checkpoint)."""

    round: int
    params: np.ndarray  # (d,) the global policy
    strategy_state: object
    env_state: EnvState  # every client's ongoing training episodes
    env_steps: int  # total env steps taken by all clients so far
    wall_s: float  # wall-clock seconds spent in rounds so far
    client_state: ClientState = field(default_factory=ClientState)  # what the learner keeps on each client (N, ...)
    sim_time_s: float = 0.0  # simulated fleet time
    version: int = 0  # number of global versions made
    inflight: InFlight | None = None  # asynchronous mode: updates in flight and the server's buffer
    pipeline_state: PipelineState = field(default_factory=PipelineState)  # what the pipeline keeps on each client
    norm: NormStats | None = None  # the fleet's normalisation statistics; None unless the learner normalises
    clusters: Clusters | None = None  # clustered federation's models (fedrl.sim.clusters); None with one model


@dataclass(frozen=True)
class Clusters:
    """The K global models of a clustered run, their strategy states and each client's choice."""

    params: np.ndarray  # (K, d) float32
    strategy_states: tuple  # one strategy state per model
    assignment: np.ndarray  # (N,) int64: the model each client chose last

    @property
    def sizes(self) -> np.ndarray:
        """How many clients chose each model last, ``(K,)``."""
        return np.bincount(self.assignment, minlength=len(self.params))

    def largest(self) -> int:
        """The model most clients chose (the lowest index on a tie)."""
        return int(np.argmax(self.sizes))

    def acting(self) -> np.ndarray:
        """Each client's model, ``(N, d)``."""
        return self.params[self.assignment]


@dataclass(frozen=True)
class InFlight:
    """Asynchronous mode's clients in flight, one row per client, and the server's buffer, one row per
    slot (``fedrl.core.rows``), so that a checkpoint holds them and a resumed run continues exactly.
    A client may train again while its last update waits in the buffer, as a deployed server lets it:
    the buffer can then hold two of its updates."""

    busy_until: np.ndarray  # (N,) simulated time its update arrives; inf when idle
    next_try: np.ndarray  # (N,) when an idle client tries to start
    base_version: np.ndarray  # (N,) int64: the version its update in flight trains from
    env_steps: np.ndarray  # (N,) int64: env steps of its update in flight
    loss: np.ndarray  # (N,) float32
    episodes: np.ndarray  # (N,) int64
    delta: np.ndarray  # (N, d) float32: its update in flight
    buffer_client: np.ndarray  # (K,) int64: the client whose update fills the slot, in arrival order; -1 = free
    buffer_delta: np.ndarray  # (K, d) float32: the update in the slot
    buffer_base: np.ndarray  # (K,) int64
    buffer_steps: np.ndarray  # (K,) int64
    # with the fleet's normalisation statistics: what its update in flight observed, and each slot's
    stats: NormStats | None = field(default=None, metadata={"record": NormStats})
    buffer_stats: NormStats | None = field(default=None, metadata={"record": NormStats})

    @classmethod
    def empty(cls, n_clients: int, slots: int, dim: int, now: float, fleet_stats: NormStats | None = None) -> InFlight:
        """No client busy, every client ready to start at ``now``, an empty buffer of ``slots``; rows
        for the statistics of what each client observes when the run normalises by ``fleet_stats``."""
        n = n_clients
        return cls(
            stats=None if fleet_stats is None else fleet_stats.no_rows(n),
            buffer_stats=None if fleet_stats is None else fleet_stats.no_rows(slots),
            busy_until=np.full(n, np.inf),
            next_try=np.full(n, now),
            base_version=np.zeros(n, np.int64),
            env_steps=np.zeros(n, np.int64),
            loss=np.zeros(n, np.float32),
            episodes=np.zeros(n, np.int64),
            delta=np.zeros((n, dim), np.float32),
            buffer_client=np.full(slots, -1, np.int64),
            buffer_delta=np.zeros((slots, dim), np.float32),
            buffer_base=np.zeros(slots, np.int64),
            buffer_steps=np.zeros(slots, np.int64),
        )

    @property
    def buffered(self) -> int:
        """How many updates wait in the buffer."""
        return int((self.buffer_client >= 0).sum())

    def with_slots(self, slots: int) -> InFlight:
        """This record with room for ``slots`` buffered updates, or for those it holds where they are
        more (a run resumed with another ``strategy.buffer_size``)."""
        room, held = max(slots, self.buffered), np.arange(self.buffered)
        if len(self.buffer_client) == room:
            return self

        def resized(array: np.ndarray, fill) -> np.ndarray:
            out = np.full((room, *array.shape[1:]), fill, array.dtype)
            out[held] = array[held]
            return out

        stats = self.buffer_stats
        if stats is not None:
            stats = NormStats.concat([take_rows(stats, held), stats.no_rows(room - len(held))])
        return replace(
            self,
            buffer_client=resized(self.buffer_client, -1),
            buffer_delta=resized(self.buffer_delta, 0),
            buffer_base=resized(self.buffer_base, 0),
            buffer_steps=resized(self.buffer_steps, 0),
            buffer_stats=stats,
        )


def slotted_buffer(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """A checkpoint's in-flight arrays (under ``prefix``) with a buffer written by an older fedrl,
    one row per client and its position (``buffered``), moved into one slot per buffered update in
    arrival order, its statistics with them (``InFlight.with_slots`` makes the room for more)."""
    position = arrays.get(prefix + "buffered")
    if position is None:
        return arrays
    order = np.argsort(position, kind="stable")[len(position) - int((position > 0).sum()) :]
    out = {k: v for k, v in arrays.items() if k != prefix + "buffered"}
    out[prefix + "buffer_client"] = order.astype(np.int64)
    moved = [prefix + name for name in ("buffer_delta", "buffer_base", "buffer_steps")]
    moved += [k for k in arrays if k.startswith(prefix + "buffer_stats.")]
    out.update({name: arrays[name][order] for name in moved})
    return out


@dataclass(frozen=True)
class Traffic:
    """Bytes on the wire in one round, each message's size measured as the length of its encoding."""

    uplink: int  # what the clients sent: their encoded updates (and SCAFFOLD's dense control deltas),
    # or with secure aggregation every message of the protocol
    downlink: int  # what the server sent: the dense global model (and SCAFFOLD's control) to each client
    # that trained, and secure aggregation's messages
    senders: int
    receivers: int
    dense_uplink: (
        int  # the uplink had every update (secure aggregation: every masked input that arrived) been sent as float32
    )

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
    traffic: Traffic | None = (
        None  # bytes up and down; None where not measured (asynchronous rounds, failed secure sums)
    )
    secure: SecureOutcome | None = None  # None without secure aggregation


_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)


def t_975(df: int) -> float:
    """Student's t 97.5 % quantile for ``df`` degrees of freedom: a table to 15, then
    ``1.96 + 2.4 / df``, within 0.5 % of the exact quantile."""
    return _T_975[df - 1] if df <= len(_T_975) else 1.96 + 2.4 / df


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
    confirmed_returns: np.ndarray | None = None  # (n_clients,): the larger evaluation of a crossing of the target
    eval_clients: np.ndarray | None = None  # the ids the returns are of, when an evaluation sampled; None: all
    fleet_size: int = 0  # the training clients there are (a sample's population)

    @property
    def client_ids(self) -> np.ndarray:
        """The training clients ``client_returns`` holds, in order."""
        return np.arange(len(self.client_returns)) if self.eval_clients is None else self.eval_clients

    @property
    def mean_return_interval(self) -> tuple[float, float]:
        """A 95 % interval for the mean return an evaluation of the whole fleet would report, when
        the evaluation sampled clients: Student's t over the sampled clients' returns, whose spread
        holds both the clients' differences and each client's episode-to-episode noise. No
        finite-population correction: the full evaluation plays other episodes, so its mean is not
        fixed once every client has been sampled. NaNs when every client was evaluated."""
        if self.eval_clients is None or self.client_returns is None or len(self.client_returns) < 2:
            return float("nan"), float("nan")
        n = len(self.client_returns)
        half = t_975(n - 1) * np.std(self.client_returns, ddof=1) / np.sqrt(n)
        return self.global_mean_return - half, self.global_mean_return + half

    @property
    def confirmed_return(self) -> float:
        """Mean over clients of the confirming evaluation; NaN in rounds that needed none."""
        return float(np.mean(self.confirmed_returns)) if self.confirmed_returns is not None else float("nan")

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


def aggregate(setup: Setup, state: SimState, updates: list[Update], round_: int) -> tuple[SimState, int, float]:
    """Close ``round_`` on ``updates`` (``fedrl.experiment.aggregation``, as the deployed server
    does) into a new version; returns the state, the number rejected and the mean staleness of the
    accepted ones."""
    done = aggregate_round(setup, state.strategy_state, state.params, state.version, round_, updates)
    state = replace(state, params=done.params, strategy_state=done.strategy_state, version=state.version + 1)
    return state, done.n_rejected, done.mean_staleness
