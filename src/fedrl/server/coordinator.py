"""The coordinator: the deployed server's state machine, with no transport in it.

It owns the client registry, the global versions, the open round, the sampling of clients,
the round deadline, the arrived updates, aggregation as every runtime aggregates (``fedrl.experiment.aggregation``), the
evaluation gate and the durable store. gRPC and MQTT adapters call the public methods below
with records from ``fedrl.wire.records``; a refused call raises ``Rejected`` and changes
nothing. Every public method is thread-safe.

A synchronous round (FedAvg, FedProx, FedAdam, SCAFFOLD ...) trains from one base version. When
it opens, ``updates_per_round`` clients are sampled from those online (seeded by the run seed
and the round); a client asking for work gets a task if it was sampled, or if fewer clients
than wanted were online to sample, or once the deadline has passed. The round closes as soon
as every wanted update is in, or after the deadline once ``min_updates`` are in. Asynchronous
mode (FedAsync, FedBuff) gives every asking client a task from the deployed version, accepts
updates up to ``max_staleness`` versions old, and closes a round every ``buffer_size``
arrivals.

Closing a round aggregates its stored updates into a candidate, evaluates the candidate on
held-out environments (the gate), and either deploys it as the next version or keeps it under
``rejected/`` while clients keep the deployed version. ``tick`` does this; a transport calls it
a few times per second from one thread.

The update pipeline (``fedrl.core.pipeline``) is the experiment's. When the experiment has one, an
update arrives as the pipeline's encoded message (``Submission.payload``), which is decoded and
then validated and stored like a float32 delta; a bare delta is refused, since it skipped the
clip, noise or compression the experiment asks of every client. Under central DP the round works
as the accountant assumes: each client takes part in a round independently with probability
``fraction`` (Poisson sampling; its coin comes from the run seed, the round and its client id, so
a restart draws the same), there are no stand-ins for absent clients, the round closes when every
sampled client is in or at the deadline (with what arrived, even nothing), every update must be
within ``clip_norm``, and the strategy gets one update: the noised sum over the expected number of
clients (``central_mean``, noise from the run seed and the round, so a restarted server
aggregates a round identically). The epsilon spent is recorded with every closed round.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedrl.agents.normalize import init_stats
from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import decode_update, spent_epsilon
from fedrl.core.securestats import from_words, word_count
from fedrl.core.strategies import state_from_arrays, state_to_arrays
from fedrl.envs import FAMILIES
from fedrl.experiment.aggregation import aggregate_round, heldout_returns, secure_update
from fedrl.experiment.callbacks import Callback, Deployed, RoundReport, finite, tell
from fedrl.experiment.card import policy_card
from fedrl.experiment.config import ConfigError, ExperimentConfig
from fedrl.experiment.loading import dotted, read_resolved, to_yaml
from fedrl.experiment.setup import Setup
from fedrl.experiment.streams import SAMPLE_STREAM
from fedrl.policy import load_policy
from fedrl.policy.card import ObsNorm
from fedrl.policy.files import read_card
from fedrl.server.auth import hash_token
from fedrl.server.config import ServerConfig
from fedrl.server.log import RefusalLog, log_event
from fedrl.server.metrics import ServerMetrics
from fedrl.server.ratelimit import RateLimiter
from fedrl.server.secure_round import SecureRound
from fedrl.server.store import KnownUpdate, Seen, Store, StoredUpdate
from fedrl.wire.mqtt_seal import key_from_token_hash
from fedrl.wire.records import (
    Ack,
    ClientStatus,
    Model,
    Reason,
    Registration,
    Rejected,
    RoundStatus,
    SecureReply,
    SecureStep,
    Submission,
    Task,
    Wait,
)

Clock = Callable[[], float]  # seconds since the epoch (time.time; tests give their own)
LIVENESS_FLUSH_S = 2.0  # how often last-seen times go to the store (they are not worth a write per heartbeat)
UPDATE_HEADROOM_BYTES = 65536  # an encoded update's headers (per tensor) on top of its values
FINISHED_AT = "finished_at"  # meta key: when the run finished (unix seconds), once it has
FORFEITING = (Reason.INVALID_ARGUMENT, Reason.PERMISSION_DENIED, Reason.RESOURCE_EXHAUSTED)  # lose the place
CLIP_SLACK = 1e-5  # relative: a client's message scaled to clip_norm may exceed it by float32 rounding


@dataclass(frozen=True)
class FleetStatus:
    """What ``fedrl fleet status`` shows."""

    deployed_version: int
    round: int
    finished: bool
    clients: list[ClientStatus]
    rounds: list[RoundStatus]


@dataclass(frozen=True)
class Taken:
    """An update checked and screened by ``Coordinator.accept``, its id reserved, not yet recorded."""

    client: str
    submission: Submission
    digest: str


class Coordinator:
    """The server's state machine over a ``Store``; see the module docstring."""

    def __init__(
        self, config: ServerConfig, store: Store, metrics: ServerMetrics | None = None, clock: Clock = time.time
    ):
        self.config = config
        self.setup = Setup(config.experiment)
        self.dim = self.setup.net.spec.dim
        self._store, self._metrics, self._clock = store, metrics or ServerMetrics.create(), clock
        self._lock = threading.RLock()
        self._opened = threading.Condition(self._lock)  # notified when a round opens: long-polling clients wake
        self._held: set[str] = set()  # clients long-polling for a task now (one call each)
        self._released = False  # the server is stopping: no client is held any longer
        self.wake = threading.Event()  # set when an arrival makes the open round due: the loop closes it at once
        self._limiter = RateLimiter(config.limits.rate_per_s, config.limits.burst)
        self._strangers = RateLimiter(config.limits.unknown_token_rate_per_s, config.limits.unknown_token_burst)
        self._seen = store.liveness()
        self._seen_lock = threading.Lock()  # the liveness and rate limits, asked by every call: not the round's lock
        self._flushed_at = clock()
        self._closing = False
        self._writing: dict[str, int] = {}  # update ids whose files are being written -> the round each joins
        self._load_tokens()
        self._client_ids: dict[str, int] = {}  # name -> the store's id, which never changes
        self._experiment_yaml = to_yaml(self.setup.for_devices())
        self._region_yaml = to_yaml(self.setup.for_devices(keep_rule=True))  # a region runs the robust rule
        self._norm_of: tuple[int, float] = (-1, 0.0)  # (version, L2 norm of its parameters)
        self._finished_noted = False
        self._told_finished: set[str] = set()  # clients answered that the run is over
        self.refusals = RefusalLog()  # every transport's refusal lines, throttled per client and reason
        self.callbacks: list[Callback] = []  # told about each closed round (TensorBoard, a user's logger)
        self._reports: collections.deque[RoundReport] = collections.deque()  # closed rounds not yet told
        store.sweep_update_files()
        self._load()

    @classmethod
    def open(
        cls,
        config: ServerConfig,
        state_dir: Path,
        metrics: ServerMetrics | None = None,
        clock: Clock = time.time,
        init_from: Path | None = None,
    ):
        """Start a new run in ``state_dir`` (from the policy saved at ``init_from``, when given:
        ``pretrained``), or resume the one stored there (same experiment only);
        ``ConfigError`` for an experiment the deployment cannot run."""
        if config.gate.enabled and not Setup(config.experiment).simulated:
            raise ConfigError(
                "bad config: gate.enabled = True: the gate evaluates candidates on environments the server "
                "simulates, and with experiment.env.family: device there are none; set gate.enabled: false"
            )
        store, stored = open_store(config, state_dir)
        if stored is not None and init_from is not None:
            store.close()
            raise ConfigError(
                f"--init-from starts a new run, but {state_dir} holds one already; use a new --state-dir "
                "(or leave --init-from out to resume it)"
            )
        if stored is None:
            setup = Setup(config.experiment)
            if init_from is None:
                params, norm = setup.initial_params(), fleet_stats(setup)
            else:
                params, norm = pretrained(setup, init_from, _one_round(setup))
            score = _gate_return(config, setup, params, norm) if config.gate.enabled else None
            state = state_to_arrays(setup.strategy.init(params))
            card = policy_card(setup, params, 0, norm=norm)
            store.record_initial(params, state, score, clock(), to_yaml(config.experiment), card, norm)
        return cls(config, store, metrics, clock)

    def _load(self) -> None:
        """Rebuild the in-memory view from the store (at start and after a restart)."""
        deployed, state = self._store.load_version(self._store.latest_version())
        self._deployed = deployed
        self._strategy_state = state_from_arrays(self.setup.strategy, state)
        self._round = self._store.open_round()
        self._selected = set(self._store.selected(self._round.round))
        if self.config.asynchronous:  # a store from before buffers were capped may hold more in one round
            size = self.config.updates_per_round
            # FedBuff's overflow stays in the run's last buffer; FedAsync applies one update at a time,
            # so updates past its last round are never applied (they were acknowledged by an older fedrl)
            last = self.config.experiment.federation.rounds if size > 1 else None
            moved = self._store.spread_updates(self._round.round, size, last)
            if moved:
                log_event("updates_spread", level="warning", moved=moved, buffer_size=size)
        self._arrived = self._store.round_clients(self._round.round)
        self._ahead = self._store.updates_after(self._round.round)
        if not self._selected:
            self._sample()
        self._secure = self._new_secure_round()
        self._secure_failures: dict[int, str] = {}
        self._forfeiting: dict[str, str] = {}  # selected clients whose place the next newcomer may take: why
        self._replaced: set[str] = set()  # clients whose place was taken: no new task this round
        self._publish()

    def _new_secure_round(self) -> SecureRound | None:
        """The open round's secure-aggregation protocol, when the experiment asks for it."""
        config = self.setup.config.pipeline.secure_aggregation
        if not config.enabled or self._regions_run_it:
            return None
        rounds = self.config.rounds
        width = self.dim + secure_extra_words(self.setup)
        return SecureRound(self._round.round, config, width, rounds.secure_step_s, rounds.retry_s, self._clock)

    @property
    def _regions_run_it(self) -> bool:
        """Whether secure aggregation runs in this server's regions, among their own devices, not here:
        at the root of a hierarchy, which takes each region's mean in the clear."""
        return self.config.hierarchical

    def _only_masked(self, client: str) -> bool:
        """Whether ``client`` may send its update only through secure aggregation: every client of a
        secure round here, and a device (not a region) at the root of a secure hierarchy."""
        secure = self.setup.config.pipeline.secure_aggregation.enabled
        return self._secure is not None or (secure and client not in self._regions)

    # --- authentication and liveness ---------------------------------------------------
    def authenticate(self, token: str, source: str = "") -> str:
        """The client a token belongs to; ``Rejected(UNAUTHENTICATED)`` for a missing or unknown one.
        A token not seen before costs ``source`` (a peer address) one of its few unknown-token calls
        (``limits.unknown_token_*``): past them its calls are refused (RESOURCE_EXHAUSTED) before the
        store is asked, so guessing tokens cannot keep the store busy."""
        if not token:
            raise Rejected(Reason.UNAUTHENTICATED, "missing token: send 'authorization: Bearer <token>'")
        hashed = hash_token(token)
        name = self._tokens.get(hashed)
        if name is None:  # a client added since (perhaps by `fedrl fleet add-client` in another process)
            if not self._strangers.allow(source, self._clock()):
                raise Rejected(
                    Reason.RESOURCE_EXHAUSTED,
                    f"too many calls with unknown tokens from {source or 'this source'}; slow down",
                )
            with self._lock:
                found, revoked = self._store.client_for_token(token), self._store.revoked_at(token)
            if revoked is not None:
                raise Rejected(
                    Reason.UNAUTHENTICATED,
                    f"the token of {revoked[0]!r} was revoked; "
                    f"`fedrl fleet rotate-token {revoked[0]}` issues a new one",
                )
            if found is None:
                raise Rejected(
                    Reason.UNAUTHENTICATED, "unknown token: add the client with `fedrl fleet add-client NAME`"
                )
            name = self._tokens[hashed] = found[0]
            with self._lock:
                self._regions = self._store.regions()
        return name

    def frame_key(self, client: str) -> bytes:
        """``client``'s MQTT frame key (``fedrl.wire.mqtt_seal``), from its stored token hash;
        ``Rejected(UNAUTHENTICATED)`` for a name never enrolled. A name not seen before costs its
        topic one of the few unknown-token calls, as ``authenticate`` does for an address."""
        key = self._frame_keys.get(client)
        if key is not None:
            return key
        if not self._strangers.allow(f"mqtt:{client}", self._clock()):
            raise Rejected(Reason.RESOURCE_EXHAUSTED, f"too many frames for the unknown client {client!r}; slow down")
        with self._lock:
            hashed = self._store.token_hash(client)
        if hashed is None:
            raise Rejected(
                Reason.UNAUTHENTICATED,
                f"no client {client!r} is enrolled: add it with `fedrl fleet add-client {client}`",
            )
        key = self._frame_keys[client] = _frame_key(hashed)
        return key

    def _note_finished(self) -> None:
        """Record once when the run finished, for ``fedrl fleet status`` (another process)."""
        if self.finished and not self._finished_noted:
            if self._store.meta(FINISHED_AT) is None:
                self._store.set_meta(FINISHED_AT, repr(self._clock()))
            self._finished_noted = True

    def _load_tokens(self) -> None:
        """Cache every valid token hash and MQTT frame key; clients added later join on first use."""
        self._tokens = self._store.token_names()  # token hash -> client name
        self._regions = self._store.regions()  # regional aggregators' names -> the most devices each stands for
        self._frame_keys = {name: _frame_key(hashed) for hashed, name in self._tokens.items()}

    def _reload_tokens(self) -> None:
        """Forget cached tokens when another process changed the store (``fedrl fleet revoke`` or
        ``rotate-token``): a revoked token stops working at the next tick."""
        if self._store.changed_elsewhere():
            self._load_tokens()

    def _client_id(self, client: str) -> int:
        """The store's numeric id of ``client`` (cached: ids never change)."""
        if client not in self._client_ids:
            self._client_ids[client] = self._store.client_id(client)
        return self._client_ids[client]

    def add_client(self, name: str, devices: int | None = None) -> str:
        """Create a client and return its token (``fedrl fleet add-client`` does the same offline; with
        ``devices``, a regional aggregator standing for that many: ``fedrl fleet add-region``);
        under central DP it takes part in the open round if its coin says so."""
        with self._lock:
            token = self._store.add_client(name, self._clock(), devices=devices)
            if devices is not None:
                self._regions[name] = devices
            hashed = hash_token(token)
            self._tokens[hashed] = name  # known at once: its first calls cost no unknown-token allowance
            self._frame_keys[name] = _frame_key(hashed)
            if self._central_dp and self._coin(name):
                self._selected.add(name)
                self._store.set_selected(self._round.round, sorted(self._selected))
            return token

    def admit(self, client: str) -> None:
        """Rate-limit an update upload at its start, before a byte of it is read (``submit`` with
        ``admitted`` then does not count it again)."""
        self._admit(client)

    def _admit(self, client: str, acting_version: int | None = None) -> None:
        """Rate-limit one call and mark the client as seen."""
        now = self._clock()
        with self._seen_lock:
            if not self._limiter.allow(client, now):
                raise Rejected(
                    Reason.RESOURCE_EXHAUSTED,
                    f"client {client!r} exceeded {self.config.limits.rate_per_s:g} "
                    f"calls/s (burst {self.config.limits.burst}); slow down",
                )
            previous = self._seen.get(client, Seen(now, None)).acting_version
            self._seen[client] = Seen(now, previous if acting_version is None else acting_version)

    def _liveness(self) -> dict[str, Seen]:
        """A copy of when each client was last heard from."""
        with self._seen_lock:
            return dict(self._seen)

    def _online(self) -> list[str]:
        """The clients heard from within ``rounds.liveness_s``, by name."""
        now, liveness_s = self._clock(), self.config.rounds.liveness_s
        return sorted(c for c, seen in self._liveness().items() if now - seen.last_seen <= liveness_s)

    def register(self, client: str) -> Registration:
        """Record a client's registration (idempotent) and tell it what to train."""
        with self._lock:
            self._admit(client)
            self._store.mark_registered(client, self._clock())
            log_event("client_registered", client=client)
            experiment = self._region_yaml if client in self._regions else self._experiment_yaml
            return Registration(client, experiment, self._deployed.version, self.config.rounds.heartbeat_s)

    def heartbeat(self, client: str, acting_version: int | None) -> int:
        """Note that ``client`` is alive and acting with ``acting_version``; returns the deployed version."""
        self._admit(client, acting_version)
        return self._deployed.version

    # --- work ------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Whether the run is over: all rounds done, or the target return reached."""
        fed = self.config.experiment.federation
        score = self._deployed.eval_return
        target = self.setup.target_return
        at_target = fed.stop_at_target and None not in (score, target) and score >= target
        return at_target or self._round.round > fed.rounds

    def unaware_of_finish(self, within_s: float) -> list[str]:
        """The clients heard from within ``within_s`` not yet told that the run is over: a server
        that exits when its run is over waits for them, or they would look for it forever."""
        now = self._clock()
        with self._lock:
            heard = [c for c, seen in self._liveness().items() if now - seen.last_seen <= within_s]
            return sorted(c for c in heard if c not in self._told_finished)

    def task(self, client: str, wait_s: float = 0.0) -> Task | Wait:
        """What ``client`` should do now: train from a version for the open round, or wait. With
        ``wait_s``, a client told to wait for the next round is held until there may be work for it
        (a round opened, a place was given up, the deadline passed), for at most that long, one call
        per client and at most ``limits.long_polls`` at a time; then it is told again, and one held for
        all of ``wait_s`` may ask again after what is left of ``rounds.retry_s``."""
        with self._lock:
            answer = self._task(client)
            return self._hold(client, answer, wait_s) if self.holds(client, answer, wait_s) else answer

    def hold(self, client: str, wait_s: float) -> Task | Wait:
        """``task`` for a transport that asked it without waiting and heard that it ``holds`` the
        client: asked again (not counted again against the client's rate), held as ``task`` would."""
        with self._lock:
            answer = self._task(client, admit=False)
            return self._hold(client, answer, wait_s) if self.holds(client, answer, wait_s) else answer

    def holds(self, client: str, answer: Task | Wait, wait_s: float) -> bool:
        """Whether ``task`` holds ``client`` told ``answer``: a wait for the next round, with room to hold it."""
        if not isinstance(answer, Wait) or answer.finished or wait_s <= 0 or self._released:
            return False
        return client not in self._held and len(self._held) < self.config.limits.held_at_most

    def _hold(self, client: str, answer: Wait, wait_s: float) -> Task | Wait:
        """Hold ``client`` (the lock held) until there may be work for it, for at most ``wait_s``."""
        deadline = time.monotonic() + wait_s
        self._held.add(client)
        try:
            while isinstance(answer, Wait) and not answer.finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return replace(answer, retry_after_s=max(0.0, self.config.rounds.retry_s - wait_s))
                # at the deadline stand-ins may take part, when the round still lacks updates: ask again then
                short = len(self._arrived) < self.config.min_updates
                until_deadline = self._time_left() if short else 0.0
                self._opened.wait(min(left, until_deadline) if until_deadline > 0 else left)
                if self._released:
                    return answer
                answer = self._task(client, admit=False)
        finally:
            self._held.discard(client)
        return answer

    def _task(self, client: str, admit: bool = True) -> Task | Wait:
        """``task`` without waiting; ``admit``: count the call against the client's rate (once per call)."""
        with self._lock:
            if admit:
                self._admit(client)
            retry = self.config.rounds.retry_s
            if self.finished:
                self._told_finished.add(client)
                return Wait(retry, "the run is finished", finished=True)
            if self._closing and not self.config.asynchronous:
                return Wait(retry, f"round {self._round.round} is closing")
            if client in self._regions and not self.config.hierarchical:
                raise Rejected(Reason.FAILED_PRECONDITION, _not_a_hierarchy(client))
            if self._regions_run_it and self._only_masked(client):
                return Wait(retry, "under secure aggregation a device trains through its region, not here")
            if not self.config.asynchronous:
                if self._secure is not None and self._client_id(client) in self._secure.joined:
                    return Wait(retry, f"your part in round {self._round.round}'s secure aggregation is in")
                if client in self._arrived:
                    return Wait(retry, f"your update for round {self._round.round} is in; waiting for the others")
                if not self._take_part(client):
                    return Wait(retry, f"not sampled for round {self._round.round}")
            deployed = self._deployed
            return Task(self._round.round, deployed.version, self._time_left(), self._server_control(), deployed.norm)

    def forfeit(self, client: str, reason: str) -> None:
        """``client``'s update was refused or its upload went silent: it keeps its place in the
        open synchronous round (it may still send a good update), but only until another online
        client asks for work and the round has no room -- then that client takes the place and
        ``client`` gets no new task this round. So one misbehaving client cannot hold a round until
        its deadline. Under central DP the sample is fixed by each client's coin: nothing changes."""
        with self._lock:
            if self.config.asynchronous or self._central_dp or client not in self._selected or client in self._arrived:
                return
            self._forfeiting[client] = reason
            self._opened.notify_all()  # a held client may take the place now

    def _replace_forfeiting(self) -> bool:
        """Free the place of one client that forfeited it and has not sent a good update since."""
        for client, reason in list(self._forfeiting.items()):
            del self._forfeiting[client]
            if client in self._selected and client not in self._arrived:
                self._selected.discard(client)
                self._replaced.add(client)
                log_event("place_given_up", level="warning", round=self._round.round, client=client, reason=reason)
                return True
        return False

    def _take_part(self, client: str) -> bool:
        """Whether ``client`` gets a task in this synchronous round (adding it when there is room,
        except under central DP, whose accountant counts on Poisson sampling: no stand-ins)."""
        if client in self._selected or self._central_dp or client in self._replaced:
            return client in self._selected
        room = len(self._selected) < self.config.updates_per_round or self._replace_forfeiting()
        if room or self._time_left() == 0.0:
            self._selected.add(client)
            self._store.set_selected(self._round.round, sorted(self._selected))
            return True
        return False

    def _time_left(self) -> float:
        return max(0.0, self._round.opened_at + self.config.rounds.deadline_s - self._clock())

    def _server_control(self) -> np.ndarray | None:
        return self._strategy_state.c if self.setup.strategy.uses_control_variates else None

    @property
    def _central_dp(self) -> bool:
        return self.setup.config.pipeline.dp.mode == "central"

    def _coin(self, client: str) -> bool:
        """Central DP: whether ``client`` takes part in the open round, with probability ``fraction``
        from the run seed, the round and the client's id alone (independent of every other client)."""
        rng = self.setup.rng(SAMPLE_STREAM, self._round.round, self._client_id(client))
        return bool(rng.random() < self.config.experiment.federation.fraction)

    def _sample(self) -> None:
        """Sample this round's clients from those online; fewer online means room for newcomers.
        Under central DP: every client with a token, each by its own coin (Poisson sampling). At the
        root of a hierarchy the regional aggregators online are sampled first."""
        if self._central_dp:
            self._selected = {c.client for c in self._store.clients() if self._coin(c.client)}
            self._store.set_selected(self._round.round, sorted(self._selected))
            return
        online = self._online()
        if not self.config.hierarchical:  # a flat run: a region enrolled by mistake takes no place
            online = [c for c in online if c not in self._regions]
        elif self._regions_run_it and self.setup.config.pipeline.secure_aggregation.enabled:
            online = [c for c in online if c in self._regions]  # devices train through their regions only
        size = min(self.config.updates_per_round, len(online))
        if self.config.asynchronous or size == 0:
            return
        rng = self.setup.rng(SAMPLE_STREAM, self._round.round)
        regions = [c for c in online if c in self._regions]
        if regions:  # the root of a hierarchy: its regions first, devices that failed over to it fill what is left
            devices = [c for c in online if c not in self._regions]
            ordered = [regions[i] for i in rng.permutation(len(regions))]
            self._selected = set((ordered + [devices[i] for i in rng.permutation(len(devices))])[:size])
        else:
            self._selected = {online[i] for i in rng.choice(len(online), size=size, replace=False)}
        self._store.set_selected(self._round.round, sorted(self._selected))

    def secure_step(self, client: str, round_: int, step: SecureStep, payload: bytes) -> SecureReply:
        """``client``'s message for one step of the open round's secure aggregation, or a poll
        (``fedrl.server.secure_round``); ``Rejected(FAILED_PRECONDITION)`` when that round is not
        open or not secure, or the client has no part in it."""
        with self._lock:
            self._admit(client)
            secure = self._secure
            if round_ in self._secure_failures:
                raise Rejected(
                    Reason.FAILED_PRECONDITION,
                    f"round {round_}'s secure aggregation failed: {self._secure_failures[round_]}",
                )
            if secure is None or round_ != self._round.round:
                if secure is not None:
                    why = f"round {self._round.round} is open"
                elif self._regions_run_it:
                    why = "it runs in the regions, among their own devices: send your steps to your region"
                else:
                    why = "this run does not aggregate securely"
                raise Rejected(Reason.FAILED_PRECONDITION, f"no secure aggregation for round {round_}: {why}")
            if client not in self._selected:
                raise Rejected(Reason.FAILED_PRECONDITION, f"{client!r} has no task in round {round_}")
            secure.takers = {self._client_id(c) for c in self._selected}
            secure.expected = len(self._selected) if self._central_dp else self.config.updates_per_round
            secure.deadline = self._clock() + self._time_left()
            return secure.offer(self._client_id(client), step, payload)

    def model(self, version: int | None = None) -> Model:
        """A deployed (current or earlier) version; ``Rejected(NOT_FOUND)`` for any other."""
        with self._lock:
            if version is None or version == self._deployed.version:
                return self._deployed
            if version < 0 or not self._store.has_version(version):
                raise Rejected(
                    Reason.NOT_FOUND, f"no version {version}; the deployed version is {self._deployed.version}"
                )
            kept = self.config.versions_kept
            if kept is not None and version <= self._deployed.version - kept:
                raise Rejected(
                    Reason.NOT_FOUND,
                    f"version {version} was pruned (store.keep_versions="
                    f"{self.config.store.keep_versions}); the deployed version is {self._deployed.version}",
                )
            return self._store.load_version(version)[0]

    # --- updates -----------------------------------------------------------------------
    def submit(self, client: str, submission: Submission, admitted: bool = False, verified: bool = False) -> Ack:
        """Validate and durably store one update; the ``Ack`` is returned only once it is on disk.
        A resubmission of a stored update id returns the original acknowledgement. The checks
        that need no shared state (decoding, shape, finite values, digest, norm) and the file
        write run outside the lock, so uploads from many clients proceed in parallel. ``admitted``:
        the transport rate-limited the upload at its start (``admit``); ``verified``: it checked the
        update's ``digest`` against the bytes received (``convert.read_update`` does), which are not
        hashed again. A transport that waits on the disk elsewhere (``durable``) runs the steps
        itself: ``accept``, ``write``, ``record``, ``sync_records``."""
        taken = self.accept(client, submission, admitted, verified)
        if isinstance(taken, Ack):  # a resend: its record may still be on its way to the disk
            self.sync_records(self.newest_record)
            return taken
        self.write(taken)
        ack, ticket = self.record(taken)
        self.sync_records(ticket)
        return ack

    @property
    def durable(self) -> bool:
        """Whether ``write`` and ``sync_records`` wait for the disk (``store.durability: fsync``)."""
        return self._store.fsync

    def accept(
        self, client: str, submission: Submission, admitted: bool = False, verified: bool = False
    ) -> Ack | Taken:
        """``submit``'s checks: the original ack for a resubmission (to be returned once
        ``sync_records(newest_record)`` has), else the update taken to be written (its id reserved
        until ``record``)."""
        if not admitted:
            self.admit(client)
        if self._only_masked(client):
            self._counted(_refuse_in_clear, client, submission)
        submission, digest = self._counted(lambda c, sub: self._prepared(c, sub, verified), client, submission)
        with self._lock:
            screened = self._counted(lambda c, sub: self._screen(c, sub, digest), client, submission)
            if isinstance(screened, Ack):
                return screened
            self._writing[submission.update_id] = screened  # its place in that round, held while it is written
        return Taken(client, submission, digest)

    def write(self, taken: Taken) -> None:
        """Write a taken update's file (fsynced when ``durable``); a failure frees its id."""
        try:
            self._store.write_update_file(taken.submission)
        except BaseException:
            with self._lock:
                self._writing.pop(taken.submission.update_id, None)
            raise

    def record(self, taken: Taken) -> tuple[Ack, int]:
        """Commit a written update to the round open now; its ack, and the ticket that
        ``sync_records`` makes durable."""
        update_id = taken.submission.update_id
        with self._lock:
            self._writing.pop(update_id, None)
            try:
                return self._counted(lambda c, sub: self._record(c, sub, taken.digest), taken.client, taken.submission)
            except Rejected:
                self._store.remove_update_file(update_id)
                raise

    @property
    def newest_record(self) -> int:
        """The ticket of the newest update recorded: ``sync_records`` of it makes every record durable."""
        return self._store.newest_record

    def sync_records(self, ticket: int) -> None:
        """Return once the records up to ``ticket`` are on disk; outside the lock, so that updates
        arriving together share one fsync."""
        self._store.sync_records(ticket)

    def note_rejected(self, client: str, refusal: Rejected) -> None:
        """Count and log a refused update; transports call it for updates they could not even
        decode. A malformed, hostile or over-the-limit one costs its client its place in the open
        round (``forfeit``)."""
        if refusal.reason in FORFEITING:
            self.forfeit(client, f"its update was refused: {refusal.reason.value}")
        self._metrics.updates_rejected.labels(reason=refusal.reason.value).inc()
        self.refusals.log(
            "update_rejected",
            (client, refusal.reason),
            client=client,
            reason=refusal.reason.value,
            message=refusal.message,
        )

    def _counted(self, check: Callable, client: str, submission: Submission):
        """``check(client, submission)``, with a refusal counted and logged."""
        try:
            return check(client, submission)
        except Rejected as exc:
            self.note_rejected(client, exc)
            raise

    def _prepared(self, client: str, s: Submission, verified: bool = False) -> tuple[Submission, str]:
        """The checks that need no shared state: identity, decoding, vectors; returns the update
        with its payload decoded into ``delta`` and the digest of what was sent."""
        if s.client != client:
            raise Rejected(
                Reason.PERMISSION_DENIED, f"the token belongs to {client!r}; an update cannot be sent as {s.client!r}"
            )
        s = self._decoded(s, client in self._regions)
        digest = self._check_vectors(s, verified)
        self._check_stats(client, s)
        return s, digest

    def _decoded(self, s: Submission, region: bool) -> Submission:
        """``s`` with its payload decoded into ``delta``; a bare delta only when the experiment has
        no update pipeline, which every device's update must pass through, or from a ``region``'s
        aggregator (its update reduces updates it decoded)."""
        if s.payload is None:
            if not self.setup.config.pipeline.applies_nothing and not region:
                raise Rejected(
                    Reason.INVALID_ARGUMENT,
                    "the experiment's update pipeline (clip, compression, DP) "
                    "encodes every update: send it as a payload, not a bare delta",
                )
            return s
        try:
            return replace(s, delta=decode_update(s.payload, self.dim))
        except (ValueError, IndexError) as exc:  # IndexError: an index past the end
            raise Rejected(Reason.INVALID_ARGUMENT, f"payload is not an encoded update: {exc}") from None

    def _screen(self, client: str, s: Submission, digest: str) -> Ack | int:
        """The checks against the server's state before the update is written; the original ack
        for a resubmission, else the round the update joins."""
        known = self._store.find_update(s.update_id)
        if known is not None:
            return self._repeat(client, s, digest, known)
        if s.update_id in self._writing:
            raise Rejected(
                Reason.ALREADY_EXISTS, f"update id {s.update_id!r} is being stored; ask again for its acknowledgement"
            )
        round_ = self._check_version(client, s)
        self._check_size(client, s)
        return round_

    def _record(self, client: str, s: Submission, digest: str) -> tuple[Ack, int]:
        """Commit the written update to the round that is open now (it may have changed meanwhile);
        returns its ack and the store's ticket for it (``Store.sync_records``)."""
        round_ = self._check_version(client, s)
        now = self._clock()
        ticket = self._store.record_update(s, round_, digest, now)
        if round_ == self._round.round:
            self._arrived.append(client)
            if len(self._arrived) >= self.config.updates_per_round:
                self.wake.set()
        else:
            self._ahead[round_] = self._ahead.get(round_, 0) + 1
        self._metrics.updates_accepted.inc()
        return Ack(s.update_id, round_, now), ticket

    def _repeat(self, client: str, s: Submission, digest: str, known: KnownUpdate) -> Ack:
        """The original ack for an idempotent resubmission; a reused id with other content is refused."""
        if known.client != client or known.digest != digest:
            raise Rejected(Reason.ALREADY_EXISTS, f"update id {s.update_id!r} was already used for a different update")
        return Ack(s.update_id, known.round, known.accepted_at, duplicate=True)

    def _check_vectors(self, s: Submission, verified: bool = False) -> str:
        """Shape, dtype, finite values, digest (``verified``: checked by the transport) and norm;
        returns the content digest."""
        vectors = [("delta", s.delta)] + ([("control_delta", s.control_delta)] if s.control_delta is not None else [])
        for label, v in vectors:
            if not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.shape != (self.dim,):
                shape = getattr(v, "shape", None)
                dtype = getattr(v, "dtype", type(v).__name__)
                raise Rejected(
                    Reason.INVALID_ARGUMENT, f"{label} must be float32 of shape ({self.dim},), got {dtype} {shape}"
                )
            bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
            if bad:
                raise Rejected(Reason.INVALID_ARGUMENT, f"{label} has {bad} NaN or infinite values")
        if (s.control_delta is not None) != self.setup.strategy.uses_control_variates:
            need = "needs" if self.setup.strategy.uses_control_variates else "takes no"
            raise Rejected(Reason.INVALID_ARGUMENT, f"strategy {self.setup.strategy.name} {need} control_delta")
        digest = s.digest if verified else s.sent_digest
        if s.digest and s.digest != digest:
            raise Rejected(Reason.INVALID_ARGUMENT, "digest mismatch: the update's bytes changed in transit")
        self._check_norm(s.delta)
        return digest

    def _check_norm(self, delta: np.ndarray) -> None:
        """The configured bounds on an update's norm (absolute, and relative to the deployed model)
        and, under central DP, the clip norm its noise is calibrated to."""
        limits = self.config.limits
        norm = l2_norm(delta)
        if limits.max_update_norm is not None and norm > limits.max_update_norm:
            raise Rejected(
                Reason.INVALID_ARGUMENT, f"update norm {norm:.4g} exceeds the bound {limits.max_update_norm:g}"
            )
        relative = limits.max_update_norm_ratio is not None and self.setup.config.pipeline.dp.mode != "local"
        if relative and norm > limits.max_update_norm_ratio * self._model_norm():
            raise Rejected(
                Reason.INVALID_ARGUMENT,
                f"update norm {norm:.4g} exceeds {limits.max_update_norm_ratio:g} x the deployed model's norm "
                f"{self._model_norm():.4g} (limits.max_update_norm_ratio)",
            )
        if not self._central_dp:
            return
        clip = self.setup.config.pipeline.clip_norm
        if norm > clip * (1 + CLIP_SLACK):
            raise Rejected(
                Reason.INVALID_ARGUMENT,
                f"update norm {norm:.6g} exceeds pipeline.clip_norm {clip:g}, "
                "the sensitivity central DP's noise is calibrated to",
            )

    def _check_stats(self, client: str, s: Submission) -> None:
        """The normalisation statistics beside an update: those the experiment keeps, of no more
        observations than the update's env steps, and sane (``NormStats.problem``)."""
        config = self.setup.config
        normalize = config.learner.normalize
        pooled = config.stats_in_secure_sum and client in self._regions  # what a region's secure sums pooled
        if not config.stats_travel and normalize.active and not pooled:
            if s.norm is not None:
                where = "inside the secure sum" if config.stats_in_secure_sum else "nowhere: they stay on the device"
                raise Rejected(
                    Reason.INVALID_ARGUMENT,
                    f"under DP or secure aggregation a device's normalisation statistics travel {where}: "
                    "send none beside the update",
                )
            return
        if s.norm is None and not normalize.active:
            return
        if s.norm is None:
            raise Rejected(
                Reason.INVALID_ARGUMENT,
                "the experiment normalises (learner.normalize): send the statistics of what you observed "
                "with the update",
            )
        obs_dim = self.setup.family.obs_dim if normalize.obs else None
        # a region's devices each observed up to the step limit, though their weights were capped
        most = self.config.max_env_steps * s.clients if client in self._regions else s.env_steps
        problem = s.norm.problem(obs_dim, normalize.reward, most)
        if problem is not None:
            raise Rejected(Reason.INVALID_ARGUMENT, problem)

    def _model_norm(self) -> float:
        """The L2 norm of the deployed parameters, computed once per version."""
        deployed = self._deployed
        if self._norm_of[0] != deployed.version:
            self._norm_of = (deployed.version, l2_norm(deployed.params))
        return self._norm_of[1]

    def _check_size(self, client: str, s: Submission) -> None:
        """The devices an update stands for (one, or up to a region's) and its env steps (up to the
        limit for each of them)."""
        devices = self._regions.get(client)
        if devices is not None and not self.config.hierarchical:  # asynchronous rounds sample no one
            raise Rejected(Reason.FAILED_PRECONDITION, _not_a_hierarchy(client))
        if not 1 <= s.clients <= (devices or 1):
            most = f"region {client!r} stands for at most {devices}" if devices else "a device's update is its own"
            raise Rejected(Reason.INVALID_ARGUMENT, f"the update reduces {s.clients} devices' updates; {most}")
        most = self.config.max_env_steps * s.clients
        if not 1 <= s.env_steps <= most:
            raise Rejected(Reason.INVALID_ARGUMENT, f"env_steps {s.env_steps} outside 1..{most}")

    def _staleness(self, base_version: int) -> int:
        """How many versions older than the deployed one ``base_version`` is, refused when it is
        unknown or (asynchronously) older than ``max_staleness`` allows."""
        if not 0 <= base_version <= self._deployed.version:  # versions are numbered 0, 1, 2 ... deployed
            raise Rejected(
                Reason.FAILED_PRECONDITION,
                f"unknown base version {base_version}; the deployed version is {self._deployed.version}",
            )
        staleness = self._deployed.version - base_version
        if self.config.asynchronous and staleness > self.config.rounds.max_staleness:
            raise Rejected(
                Reason.FAILED_PRECONDITION,
                f"base version {base_version} is {staleness} versions old; "
                f"at most {self.config.rounds.max_staleness} are accepted",
            )
        return staleness

    def _check_version(self, client: str, s: Submission) -> int:
        """The round the update joins, after checking its base version and round."""
        staleness = self._staleness(s.base_version)
        if self.config.asynchronous:
            return self._buffer_joined(staleness)
        r = self._round
        if s.round != r.round or self._closing:
            raise Rejected(
                Reason.FAILED_PRECONDITION,
                f"round {s.round} is not open for updates; the open round is "
                f"{r.round}{' (closing)' if self._closing else ''}",
            )
        if s.base_version != r.base_version:
            raise Rejected(
                Reason.FAILED_PRECONDITION,
                f"stale base version {s.base_version}: round {r.round} trains from version {r.base_version}",
            )
        if client not in self._selected:
            raise Rejected(Reason.FAILED_PRECONDITION, f"client {client!r} has no task in round {r.round}")
        if client in self._arrived:
            raise Rejected(Reason.ALREADY_EXISTS, f"client {client!r} already sent an update for round {r.round}")
        return r.round

    def check_room(self, update_id: str, base_version: int) -> None:
        """Refuse at once, before a transport reads an upload's bytes, an asynchronous update from
        ``base_version`` that would be refused for its base version or find no buffer with room
        (or a run that is over); recording the update checks again, for good. A resend of an
        update already stored passes: it is answered with its original acknowledgement."""
        if self.config.asynchronous:
            with self._lock:
                if update_id in self._writing or self._store.find_update(update_id) is not None:
                    return
                self._buffer_joined(self._staleness(base_version))

    def _buffer_joined(self, staleness: int) -> int:
        """The round (buffer) an asynchronous arrival ``staleness`` versions old joins: the open one
        unless it is full or being aggregated, else the first after it holding fewer than a
        buffer's updates (those being written count), so a close reads at most one buffer whatever
        the arrival rate. It may wait at most ``max_staleness - staleness`` rounds ahead (at least
        one), so it is at most one version staler than ``max_staleness`` when applied, and never
        past the run's last round. Past that it is refused as UNAVAILABLE, which devices retry
        after a pause, their update kept; once the run is over, as FAILED_PRECONDITION."""
        if self.finished:
            raise Rejected(Reason.FAILED_PRECONDITION, "the run is over: no more versions will be made")
        size, open_round = self.config.updates_per_round, self._round.round
        writing = collections.Counter(self._writing.values())
        if not self._closing and len(self._arrived) + writing[open_round] < size:
            return open_round
        most = max(1, self.config.rounds.max_staleness - staleness)
        last = min(open_round + most, self.config.experiment.federation.rounds)
        for ahead in range(open_round + 1, last + 1):
            if self._ahead.get(ahead, 0) + writing[ahead] < size:
                return ahead
        raise Rejected(
            Reason.UNAVAILABLE,
            f"the server's buffers are full: round {open_round} and the {last - open_round} it may queue behind "
            f"it hold {size} updates each; send again in a moment",
        )

    # --- closing rounds ------------------------------------------------------------------
    def tick(self) -> None:
        """Store liveness now and then, and close the open round if it is due."""
        with self._lock:
            self._flush_liveness()
            self._reload_tokens()
            self._note_finished()
            if self._closing or not self._due():
                return
            self._closing = True
            round_, deployed, state, secure = self._round, self._deployed, self._strategy_state, self._secure
            records = self._store.round_records(round_.round)
        try:
            if secure is not None and secure.total is None:
                with self._lock:
                    self._close_failed(round_, secure.failure)
                return
            stored = self._store.read_updates(records, self.dim)
            norm = merged_stats(deployed.norm, stored)
            if secure is not None:
                most = len(secure.survivors) * self.config.max_env_steps
                total, pooled = secure_parts(self.setup, secure.total, self.dim, deployed.norm, most)
                update = secure_update(self.setup, total, len(secure.survivors), deployed.version, round_.round)
                candidate, new_state = self.setup.strategy.aggregate(state, deployed.params, [update])
                norm = norm if pooled is None else norm.merge(pooled)
            else:
                candidate, new_state = self._aggregate(stored, deployed, state, round_.round)
            score = _gate_return(self.config, self.setup, candidate, norm) if self.config.gate.enabled else None
            with self._lock:
                self._commit(round_, candidate, new_state, score, norm)
            for u in stored:
                self._store.remove_update_file(u.update_id)
        finally:
            with self._lock:
                self._closing = False
                self._opened.notify_all()  # clients held while the round was closing may have work now
            self._tell_callbacks()  # outside the lock: a slow logger must not hold up the clients

    def _due(self) -> bool:
        n = len(self._arrived)
        if self.finished:
            return False
        if self._secure is not None:
            self._secure.advance()
            return self._secure.settled
        if (
            self._central_dp
        ):  # every sampled client is in, or the deadline passed: what came (even nothing) is one release
            return self._selected <= set(self._arrived) or self._time_left() == 0.0
        if n == 0:
            return False
        wanted = self.config.updates_per_round
        return n >= wanted or (n >= self.config.min_updates and self._time_left() == 0.0)

    def _aggregate(self, stored: list[StoredUpdate], deployed: Model, state, round_: int) -> tuple[np.ndarray, object]:
        """The candidate and strategy state from the round's stored updates, closed as every
        runtime closes a round (``fedrl.experiment.aggregation``)."""
        updates = [u.as_update() for u in stored]
        # in a hierarchy each sender is a region (or a device of its own)
        done = aggregate_round(
            self.setup, state, deployed.params, deployed.version, round_, updates, self.config.hierarchical
        )
        return done.params, done.strategy_state

    def _epsilon(self, closed_rounds: int) -> float | None:
        """The DP epsilon spent by the first ``closed_rounds`` rounds (None without DP). Local mode
        counts the client with the most accepted updates, as the simulator counts participation."""
        pipeline, fed = self.setup.config.pipeline, self.config.experiment.federation
        if pipeline.dp.mode == "none":
            return None
        most = self._store.most_updates_per_client(closed_rounds) if pipeline.dp.mode == "local" else 0
        return spent_epsilon(pipeline, fed.fraction, closed_rounds, most)

    def _promotes(self, score: float | None) -> bool:
        """The gate: a candidate may lose at most the tolerance against the deployed version."""
        current = self._deployed.eval_return
        if score is None or current is None:
            return True
        gate = self.config.gate
        return score >= current - max(gate.tolerance, gate.relative_tolerance * abs(current))

    def _commit(
        self, round_: RoundStatus, candidate: np.ndarray, state, score: float | None, norm: NormStats | None
    ) -> None:
        """Deploy or reject the candidate (with the statistics ``norm`` it normalises with), close the
        round durably and open the next."""
        now, spent = self._clock(), self._epsilon(round_.round)
        deployed = None
        if self._promotes(score):
            version = self._deployed.version + 1
            card = policy_card(self.setup, candidate, version, norm=norm)
            deployed = Deployed(version, candidate, card)
            self._store.write_version_file(version, candidate, state_to_arrays(state), card, norm)
            self._store.close_round(round_.round, now, score, version, version, spent)
            self._deployed, self._strategy_state = Model(version, candidate, round_.round, score, norm), state
            if self.config.versions_kept is not None:
                self._store.prune_versions(version + 1 - self.config.versions_kept)
        else:
            self._store.write_rejected(round_.round, candidate, norm)
            self._store.close_round(round_.round, now, score, None, self._deployed.version, spent)
            self._metrics.candidates_rejected.inc()
        log_event(
            "round_closed",
            round=round_.round,
            updates=len(self._secure.survivors) if self._secure is not None else len(self._arrived),
            candidate_return=score,
            deployed_version=self._deployed.version,
            promoted=self._deployed.round == round_.round,
            epsilon=spent,
        )
        self._metrics.round_duration_seconds.observe(now - round_.opened_at)
        self._tell(round_, now, score, spent, deployed)
        self._open_next_round()

    @property
    def open_round(self) -> int:
        """The number of the round now open."""
        return self._round.round

    def _tell(
        self,
        round_: RoundStatus,
        now: float,
        score: float | None,
        spent: float | None,
        deployed: Deployed | None = None,
    ) -> None:
        """Queue the closed round's report for the callbacks (told by ``tick`` outside the lock):
        evaluated when the gate scored a candidate, ``deployed`` when it was promoted."""
        updates = len(self._secure.survivors) if self._secure is not None else len(self._arrived)
        scalars = {
            "return/candidate": score,
            "return/deployed": self._deployed.eval_return,
            "deploy/version": self._deployed.version,
            "deploy/promoted": int(self._deployed.round == round_.round),
            "round/updates": updates,
            "round/duration_s": now - round_.opened_at,
            "privacy/epsilon": spent,
        }
        self._reports.append(RoundReport(round_.round, finite(scalars), evaluated=score is not None, deployed=deployed))

    def _tell_callbacks(self) -> None:
        """Hand the queued reports to the callbacks; one that fails is logged and the server goes on."""
        while self._reports:
            report = self._reports.popleft()
            for callback in self.callbacks:
                try:
                    tell(callback, report)
                except Exception as exc:  # a logger must not stop the federation
                    log_event("callback_failed", level="warning", callback=type(callback).__name__, error=repr(exc))

    def _close_failed(self, round_: RoundStatus, reason: str) -> None:
        """Close a round that produced no candidate; the deployed version stays."""
        now, spent = self._clock(), self._epsilon(round_.round)
        self._store.close_round(round_.round, now, None, None, self._deployed.version, spent)
        log_event("round_failed", level="warning", round=round_.round, reason=reason)
        self._secure_failures = {round_.round: reason}  # told to its clients that are still polling
        self._metrics.round_duration_seconds.observe(now - round_.opened_at)
        self._tell(round_, now, None, spent)
        self._open_next_round()

    def _open_next_round(self) -> None:
        self._round = self._store.open_round()
        self._arrived = self._store.round_clients(self._round.round)
        self._ahead = self._store.updates_after(self._round.round)
        if len(self._arrived) >= self.config.updates_per_round:
            self.wake.set()  # a buffer filled while the last one was aggregated: close it now
        self._selected = set()
        self._forfeiting, self._replaced = {}, set()
        self._sample()
        self._secure = self._new_secure_round()
        self._publish()

    def _publish(self) -> None:
        self._metrics.deployed_version.set(self._deployed.version)
        self._metrics.current_round.set(self._round.round)
        spent = self._epsilon(self._round.round - 1)
        self._metrics.privacy_epsilon.set(float("inf") if spent is None else spent)

    def _flush_liveness(self) -> None:
        now = self._clock()
        if now - self._flushed_at >= LIVENESS_FLUSH_S:
            self._store.save_liveness(self._liveness())
            self._flushed_at = now
        self._metrics.clients_connected.set(len(self._online()))

    # --- inspection ----------------------------------------------------------------------
    @property
    def max_update_bytes(self) -> int:
        """The most bytes one update may declare, checked before any of it is buffered: its delta
        (or an encoded payload, whose indices may double it) and a control delta at the model's size,
        with room for the encoding's headers; never more than ``limits.max_message_bytes``."""
        return min(self.config.limits.max_message_bytes, 16 * self.dim + UPDATE_HEADROOM_BYTES)

    @property
    def deployed_version(self) -> int:
        """The version clients should act with."""
        return self._deployed.version

    def status(self, rounds: int = 20, save: bool = True) -> FleetStatus:
        """Clients, their liveness and the newest rounds; ``save``: store the liveness first (for a
        reader of the store), else overlay the liveness held in memory (a dashboard polling it)."""
        with self._lock:
            seen = self._liveness()
            if save:
                self._store.save_liveness(seen)
            clients = self._store.clients()
            if not save:
                clients = [_seen_now(c, seen.get(c.client)) for c in clients]
            return FleetStatus(
                self._deployed.version, self._round.round, self.finished, clients, self._store.rounds(rounds)
            )

    def release(self) -> None:
        """Answer every client held waiting for a round now, and hold none from now on (the server stops)."""
        with self._lock:
            self._released = True
            self._opened.notify_all()

    def close(self) -> None:
        """Store liveness, close the store and the callbacks."""
        with self._lock:
            self._store.save_liveness(self._liveness())
            self._store.close()
            for callback in self.callbacks:
                try:
                    callback.close()
                except Exception as exc:
                    log_event("callback_failed", level="warning", callback=type(callback).__name__, error=repr(exc))


def _not_a_hierarchy(client: str) -> str:
    """Why a regional aggregator is refused by a flat run's server."""
    flat = "experiment.federation.regions: 1"
    return f"{client!r} is a regional aggregator, and this experiment is not a hierarchy ({flat})"


def _seen_now(client: ClientStatus, seen: Seen | None) -> ClientStatus:
    """``client`` with the last contact and acting version held in memory, when newer than stored."""
    if seen is None:
        return client
    return dataclasses.replace(client, last_seen=seen.last_seen, acting_version=seen.acting_version)


def _frame_key(token_hash: str) -> bytes:
    """The MQTT frame key of the client whose token hash (hex) this is."""
    return key_from_token_hash(bytes.fromhex(token_hash))


def _refuse_in_clear(_client: str, _submission: Submission) -> None:
    """Under secure aggregation the server must never hold a single update in the clear."""
    raise Rejected(
        Reason.FAILED_PRECONDITION,
        "this run aggregates securely: an update is sent masked, in the secure-aggregation steps, never pushed",
    )


def open_store(config: ServerConfig, state_dir: Path) -> tuple[Store, str | None]:
    """The store in ``state_dir`` and the experiment of the run it holds (None: no run yet);
    ``ConfigError`` when that is not ``config``'s experiment."""
    store = Store(state_dir, config.store.durability)
    stored = store.meta("experiment")
    if stored is not None and stored != to_yaml(config.experiment) and not same_experiment(stored, config.experiment):
        store.close()
        raise ConfigError(
            f"state dir {state_dir} holds a run of a different experiment{_differences(stored, config.experiment)}; "
            "use a new --state-dir or the experiment it was started with"
        )
    return store, stored


def same_experiment(stored_yaml: str, experiment: ExperimentConfig) -> bool:
    """Whether a state directory's experiment, perhaps written by an older fedrl, is ``experiment``."""
    try:
        return read_resolved(stored_yaml) == experiment
    except ConfigError:
        return False


def _differences(stored_yaml: str, experiment: ExperimentConfig, most: int = 3) -> str:
    """The first keys on which a state directory's experiment and ``experiment`` differ, for the message
    refusing it (a learner key the config leaves unset takes its env family's default, which a later
    fedrl may have changed); empty when the stored one cannot be read."""
    try:
        theirs = dotted(read_resolved(stored_yaml).model_dump(mode="json"))
    except ConfigError:
        return ""
    ours = dotted(experiment.model_dump(mode="json"))
    keys = [k for k in sorted(theirs.keys() | ours.keys()) if theirs.get(k) != ours.get(k)]
    if not keys:
        return ""
    shown = "; ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in keys[:most])
    defaults = FAMILIES[experiment.env.family].learner_defaults if experiment.env.family in FAMILIES else {}
    family = bool(defaults) and any(k.startswith("learner.") for k in keys)
    hint = " (learner keys the config leaves unset take the env family's defaults: `fedrl envs`)" if family else ""
    return f" ({shown}{'; ...' if len(keys) > most else ''}){hint}"


def pretrained(setup: Setup, source: Path, count: int = 1) -> tuple[np.ndarray, NormStats | None]:
    """The parameters of the policy saved at ``source`` (a run directory, a server's or device's state
    directory, a policy file or an export: ``fedrl.policy.load_policy``), to start a run from, and the
    normalisation statistics to start with (``pretrained_stats``, as ``count`` observations);
    ``ConfigError`` naming both sides when its network is not the experiment's (compared on the card
    first, so a file never makes the server import the network it names) or one normalises
    observations and the other does not."""
    ours_name = setup.config.learner.network or ""
    try:
        theirs_name = "" if Path(source).suffix == ".zip" else read_card(source).network
        if theirs_name != ours_name:
            raise ValueError(
                f"its policy runs {_named_network(theirs_name)}; this experiment trains {_named_network(ours_name)}"
            )
        policy = load_policy(source, setup.network)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--init-from {source}: {exc}") from None
    expected = policy_card(setup, setup.initial_params())
    theirs, ours = policy.card, expected
    if (theirs.layout, theirs.q_values) != (ours.layout, ours.q_values):
        raise ConfigError(
            f"--init-from {source}: its policy is a {_network(theirs)} network; this experiment trains a "
            f"{_network(ours)} one"
        )
    return np.array(policy.params, dtype=np.float32), pretrained_stats(setup, theirs.obs_norm, source, count)


def pretrained_stats(setup: Setup, obs_norm: ObsNorm | None, source: Path, count: int) -> NormStats | None:
    """The statistics a run from a saved policy starts with: the observation statistics its card
    carries, counted as ``count`` observations (a card keeps no count; the server passes one
    client's round of env steps, so the fleet's own observations soon outweigh them);
    ``ConfigError`` when the policy takes raw observations and the experiment normalises them, or
    the other way round."""
    start = fleet_stats(setup)
    normalises = start is not None and start.obs is not None
    if normalises != (obs_norm is not None):
        theirs, ours = ("normalised", "raw") if obs_norm is not None else ("raw", "normalised")
        raise ConfigError(
            f"--init-from {source}: its policy takes {theirs} observations; this experiment trains on {ours} ones "
            f"(learner.normalize.obs: {str(normalises).lower()})"
        )
    if obs_norm is None:
        return start
    var = np.asarray(obs_norm.var, dtype=np.float64)
    obs = Moments(np.array(float(count)), np.asarray(obs_norm.mean, dtype=np.float64), var * count)
    return replace(start, obs=obs)


def _named_network(name: str) -> str:
    return f"your network {name!r}" if name else "fedrl's MLP"


def _network(card) -> str:
    kind = "Q" if card.q_values else "actor-critic"
    layers = card.network or "-".join(map(str, card.hidden))
    return f"{kind} {card.obs_dim}-{layers}-{card.action.n} ({card.action.kind})"


def _gate_return(config: ServerConfig, setup: Setup, params: np.ndarray, norm: NormStats | None) -> float:
    """Mean return of ``params`` (normalising with ``norm``) on the gate's held-out environments,
    always the same episodes."""
    gate = config.gate
    return float(heldout_returns(setup, params, gate.heldout_clients, gate.episodes, norm=norm).mean())


def _one_round(setup: Setup) -> int:
    """About the observations one client makes in a round: its step budget, or its episode budget
    at the family's episode length."""
    budget = setup.budget
    return budget.steps if budget.steps is not None else budget.episodes * setup.family.time_limit


def fleet_stats(setup: Setup) -> NormStats | None:
    """The statistics a deployment starts from: nothing observed yet, one set for the whole fleet
    (with personal statistics too: devices keep their own, and the server pools what they send, if
    they send any (``ExperimentConfig.stats_travel``), for the devices that have none and for the
    saved policy); None when the experiment normalises nothing."""
    stats = init_stats(setup.config.learner.normalize, setup.family.obs_dim, 1)
    return None if stats is None else stats.pooled()


def secure_extra_words(setup: Setup) -> int:
    """The words a secure round's inputs carry beyond the update: each client's statistics, when
    they travel inside the secure sum (``ExperimentConfig.stats_in_secure_sum``); else none."""
    return word_count(*setup.statistics_layout) if setup.config.stats_in_secure_sum else 0


def secure_parts(
    setup: Setup, total: np.ndarray, dim: int, center: NormStats | None, most: int
) -> tuple[np.ndarray, NormStats | None]:
    """A secure round's unmasked sum split into the updates' sum (its first ``dim`` words) and the
    survivors' statistics pooled, which the rest stands for, around ``center`` (the base version's,
    as the devices' tasks carried them). None when none travel in the sum, and when the pooled ones
    are no statistics of at most ``most`` observations (a sum that wrapped, a device's bad words),
    which is logged: the fleet's then stay as they were."""
    if not setup.config.stats_in_secure_sum:
        return total, None
    obs_dim, returns = setup.statistics_layout
    try:
        pooled = from_words(total[dim:], obs_dim, returns, center)
        problem = pooled.problem(obs_dim, returns, most)
    except ValueError as exc:
        problem = str(exc)
    if problem is not None:
        log_event("secure_statistics_refused", level="warning", reason=problem)
        return total[:dim], None
    return total[:dim], pooled


def merged_stats(norm: NormStats | None, stored: list[StoredUpdate]) -> NormStats | None:
    """``norm`` with the statistics sent beside the round's ``stored`` updates merged in as the
    simulator merges a round's (``NormStats.merge_rows``): pooled (``pooled_stats``), then merged
    into ``norm``."""
    pooled = pooled_stats(stored)
    if norm is None or pooled is None:  # personal statistics under DP or secure aggregation travel nowhere
        return norm
    return norm.merge(pooled)


def pooled_stats(stored: list[StoredUpdate]) -> NormStats | None:
    """The statistics sent beside ``stored`` updates pooled in client order, whatever order they
    arrived in; None when none carries any."""
    sent = [u.norm for u in sorted(stored, key=lambda u: u.client_id) if u.norm is not None]
    if not sent:
        return None
    first, *rest = sent
    for increments in rest:
        first = first.merge(increments)
    return first


def l2_norm(vector: np.ndarray) -> float:
    """The L2 norm of ``vector``, summed in float64 by numpy's own loop: handler threads call it at
    once, and OpenBLAS's ``dot`` (behind ``np.linalg.norm``), called from 32 threads at a time on
    two cores, took 130 times as long per call (its threads contend)."""
    wide = vector.astype(np.float64)
    return math.sqrt(np.einsum("i,i->", wide, wide))
