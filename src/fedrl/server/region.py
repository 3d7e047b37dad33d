"""A regional aggregator's coordinator: a server to its devices whose rounds are its parent's.

A region (``fedrl aggregator``) serves its devices as ``fedrl server`` does -- tokens, rate
limits, the durable store, the same gRPC or MQTT service -- but it makes no versions of its own.
Its versions are copies of its parent's, under the parent's numbers (``mirror``), and its rounds
are the parent's rounds it was given a task in, under the parent's numbers (``arm``). Its devices
train from the parent's version, the region closes the round as a server does (every wanted
update in, or ``min_updates`` by its deadline), and instead of a candidate it makes the one update
it forwards (``fedrl.experiment.aggregation.region_update``: the robust rule and the norm bound over
its devices' updates, weighted by their env steps, with their normalisation statistics pooled).
``fedrl.region`` pushes it to the parent and reports back (``forwarded`` or ``dropped``); only then
does the round close here.

What survives a ``kill -9``: the parent's round the open round belongs to (``PARENT_ROUND``), and
that its reduction was being forwarded (``FORWARDING``): no update joins it any more, and the
update itself is on disk before its first push (``FORWARD_FILE``), so a restart pushes the same
bytes and the parent acknowledges them once (the update id is the region's name and the round).

A round runs to the parent's deadline less a margin (``FORWARD_SHARE``): one that by then lacks
``min_updates`` is dropped here, with its updates (the parent would refuse it as late).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from fedrl.core.normstats import NormStats
from fedrl.core.strategies import state_to_arrays
from fedrl.core.update import Update
from fedrl.experiment.aggregation import region_update, secure_update
from fedrl.experiment.card import policy_card
from fedrl.experiment.loading import to_yaml
from fedrl.experiment.setup import Setup
from fedrl.server.config import ServerConfig
from fedrl.server.coordinator import Clock, Coordinator, open_store, pooled_stats, secure_parts
from fedrl.server.log import log_event
from fedrl.server.metrics import ServerMetrics
from fedrl.server.secure_round import SecureRound
from fedrl.server.store import Store
from fedrl.wire.pending import PendingStore
from fedrl.wire.records import Ack, Model, Submission, Task, Wait

PARENT_ROUND = "parent_round"  # meta: the parent's round the open round is (JSON), while it is open
FORWARDING = "forwarding"  # meta: the open round whose reduction is being forwarded (no update joins it)
PARENT_FINISHED = "parent_finished"  # meta: the parent said its run is over
FORWARD_FILE = "forward.safetensors"  # the update being forwarded: a restart pushes the same bytes
FORWARD_SHARE = 0.8  # a round here closes by this share of the parent's time left: the rest is for forwarding


@dataclass(frozen=True)
class ParentRound:
    """The parent's round the region's open round belongs to."""

    round: int
    base_version: int
    forward_by: float  # unix seconds: the round closes here by then, to reach the parent before its deadline


class RegionCoordinator(Coordinator):
    """A ``Coordinator`` whose versions and rounds are its parent's; see the module docstring."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        name: str,
        metrics: ServerMetrics | None = None,
        clock: Clock = time.time,
    ):
        self.name = name
        self.ready = threading.Event()  # set when an update is ready to forward: the upstream pushes it at once
        self._outbox: Submission | None = None
        self._outgoing = PendingStore(store.path, FORWARD_FILE)  # the update being forwarded, on disk
        super().__init__(config, store, metrics, clock)

    @classmethod
    def open_region(
        cls,
        config: ServerConfig,
        state_dir: Path,
        name: str,
        parent_model: Model,
        metrics: ServerMetrics | None = None,
        clock: Clock = time.time,
    ) -> RegionCoordinator:
        """Start region ``name`` in ``state_dir`` from its parent's deployed ``parent_model``, or
        resume the one stored there (its parent's experiment only)."""
        store, stored = open_store(config, state_dir)
        if stored is None:
            setup = Setup(config.experiment)
            m = parent_model
            state = state_to_arrays(setup.strategy.init(m.params))
            card = policy_card(setup, m.params, m.version, norm=m.norm)
            experiment = to_yaml(config.experiment)
            store.record_initial(m.params, state, m.eval_return, clock(), experiment, card, m.norm, m.version, m.round)
        return cls(config, store, name, metrics, clock)

    def _load(self) -> None:
        self._passes_secure = bool(self._regions)
        super()._load()
        parent = self._store.meta(PARENT_ROUND)
        found = None if parent is None else ParentRound(**json.loads(parent))
        self._parent = found if found is not None and found.round == self._round.round else None
        self._forwarding = self._parent is not None and self._store.meta(FORWARDING) == str(self._round.round)
        self._closing = self._forwarding  # a restart does not reopen a round that was being forwarded
        self._parent_finished = self._store.meta(PARENT_FINISHED) is not None

    # --- what the parent says ------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Whether the parent said its run is over."""
        return self._parent_finished

    @property
    def armed(self) -> bool:
        """Whether a parent's round is open here (its devices train, or its update is being forwarded)."""
        return self._parent is not None

    @property
    def forwarding(self) -> bool:
        """Whether the open round's update is being forwarded (no device update joins it)."""
        return self._forwarding

    def has_version(self, version: int) -> bool:
        """Whether the parent's ``version`` is copied here."""
        with self._lock:
            return self._store.has_version(version)

    def mirror(self, model: Model) -> None:
        """Copy the parent's version ``model``; the newest copy is the one the devices act with. A
        newer version than the open round's base means the parent closed that round: it is dropped."""
        with self._lock:
            if not self._store.has_version(model.version):
                card = policy_card(self.setup, model.params, model.version, norm=model.norm)
                state = state_to_arrays(self.setup.strategy.init(model.params))
                self._store.write_version_file(model.version, model.params, state, card, model.norm)
                self._store.record_copy(model.version, model.round, model.eval_return, self._clock())
            if model.version <= self._deployed.version:
                return
            self._deployed = model
            if self.config.versions_kept is not None:
                self._store.prune_versions(model.version + 1 - self.config.versions_kept)
            self._publish()
            if self._parent is not None and not self._forwarding and model.version > self._parent.base_version:
                self._drop(f"the parent deployed version {model.version}: its round {self._parent.round} is over")
            self._opened.notify_all()

    def arm(self, task: Task) -> bool:
        """Open the parent's round ``task.round`` here, from its base version (copied already): the
        devices are sampled, and those held waiting get their tasks. False for a round closed here
        already (forwarded or dropped: the parent may offer it again while it stays open there)."""
        with self._lock:
            if self._parent is None and task.round < self._round.round:
                return False
            if self._parent is not None:
                if self._parent.round == task.round:
                    return True
                if self._forwarding:  # its update goes first: the parent's next round is taken after
                    return False
                self._drop(f"the parent opened round {task.round}")
            if not self._store.has_version(task.base_version):
                raise ValueError(f"version {task.base_version} is not copied here yet")
            if task.base_version > self._deployed.version:
                self._deployed = self._store.load_version(task.base_version)[0]
            now = self._clock()
            self._store.renumber_open_round(task.round, task.base_version, now)
            self._parent = ParentRound(task.round, task.base_version, now + FORWARD_SHARE * task.deadline_s)
            self._store.set_meta(PARENT_ROUND, json.dumps(asdict(self._parent)))
            self._round = self._store.open_round()
            self._arrived, self._selected, self._forfeiting, self._replaced = [], set(), {}, set()
            self._passes_secure = bool(self._regions)  # fixed for the round: a region enrolled now counts from the next
            self._secure = self._new_secure_round()
            self._sample()
            self._publish()
            log_event(
                "parent_round", round=task.round, base_version=task.base_version, forward_by=self._parent.forward_by
            )
            self._opened.notify_all()
            return True

    def parent_moved_on(self, reason: str) -> None:
        """The parent no longer has a place for the region in the open round (it closed it, or gave the
        place away): the round is dropped here unless its update is being forwarded."""
        with self._lock:
            if self._parent is not None and not self._forwarding:
                self._drop(reason)

    def finish(self) -> None:
        """The parent's run is over: devices are told so."""
        with self._lock:
            self.parent_moved_on("the parent's run is over")
            if not self._parent_finished:
                self._store.set_meta(PARENT_FINISHED, repr(self._clock()))
                self._parent_finished = True
                self._opened.notify_all()

    def outbox(self) -> Submission | None:
        """The update to forward to the parent, once the round is reduced; None before."""
        with self._lock:
            return self._outbox

    def forwarded(self, ack: Ack) -> None:
        """The parent acknowledged the forwarded update: the round closes here."""
        with self._lock:
            log_event("forwarded", round=ack.round, update_id=ack.update_id, duplicate=ack.duplicate)
            self._close_here(None)

    def dropped(self, reason: str) -> None:
        """The parent refused the forwarded update: the round closes here without it."""
        with self._lock:
            self._close_here(f"the parent refused its update: {reason}")

    # --- the devices' side ---------------------------------------------------------------
    @property
    def _regions_run_it(self) -> bool:
        """A region runs secure aggregation among its own devices; one with regions below it (regions
        of regions) leaves it to them, as the root does, and takes their means in the clear. Decided
        when a round opens here, for the whole round."""
        return self._passes_secure

    def _task(self, client: str, admit: bool = True) -> Task | Wait:
        with self._lock:
            if self._parent is None and not self.finished:
                if admit:
                    self._admit(client)
                return Wait(self.config.rounds.retry_s, "waiting for the parent's next round")
            return super()._task(client, admit)

    def _time_left(self) -> float:
        left = super()._time_left()
        if self._parent is None:
            return left
        return max(0.0, min(left, self._parent.forward_by - self._clock()))

    # --- closing a round here ------------------------------------------------------------
    def tick(self) -> None:
        """Store liveness now and then; reduce the open round into the update to forward once it
        is due (or drop it, when it cannot be forwarded in time, or its secure aggregation failed)."""
        with self._lock:
            self._flush_liveness()
            self._reload_tokens()
            self._note_finished()  # for `fedrl fleet status` on the region's state directory
            if self._parent is None or self._outbox is not None:
                return
            if not self._forwarding:
                if self._secure is not None:  # it settles by its deadline, set here even if no device has joined
                    self._secure.deadline = min(self._secure.deadline, self._clock() + self._time_left())
                elif self._time_left() == 0.0 and len(self._arrived) < self.config.min_updates:
                    self._drop(f"{len(self._arrived)} updates by the parent's deadline, fewer than min_updates")
                    return
                if not self._due():
                    return
                if self._secure is not None and self._secure.total is None:
                    self._drop(f"its secure aggregation failed: {self._secure.failure}")
                    return
                self._forwarding = self._closing = True
                self._store.set_meta(FORWARDING, str(self._round.round))
            parent, records, secure = self._parent, self._store.round_records(self._round.round), self._secure
        submission = self._saved_forward()
        if submission is None or submission.round != parent.round:
            submission = self._reduced(parent, records, secure)
            if submission is not None:
                self._outgoing.save(submission)  # a restart forwards these very bytes
        with self._lock:
            if submission is None:
                self._close_here("nothing to forward: every update was refused, or the secure sum was lost")
                return
            self._outbox = submission
            self.ready.set()

    def _saved_forward(self) -> Submission | None:
        """The update being forwarded, as saved before its first push; None when there is none or its
        file is damaged (then the round is reduced again, or dropped when its secure sum is gone)."""
        try:
            return self._outgoing.load()
        except ValueError as exc:
            log_event("forward_file_damaged", level="warning", error=str(exc))
            self._outgoing.clear()
            return None

    def _reduced(self, parent: ParentRound, records: list, secure: SecureRound | None) -> Submission | None:
        """The one update the region forwards for ``parent``'s round (None when none is usable): its
        devices' stored updates reduced, or the mean of their secure sum."""
        if secure is not None:
            if secure.total is None:  # the protocol's state did not survive a restart of the region
                return None
            n = len(secure.survivors)
            most = n * self.config.max_env_steps
            total, pooled = secure_parts(self.setup, secure.total, self.dim, self._deployed.norm, most)
            reduced = secure_update(self.setup, total, n, parent.base_version, parent.round)
            return self._submission(parent, replace(reduced, clients=n), {}, pooled)
        stored = self._store.read_updates(records, self.dim)
        updates = [u.as_update() for u in stored]
        below = frozenset(u.client_id for u in stored if u.client in self._regions)
        reduced, refused = region_update(self.setup, updates, parent.base_version, below)
        if refused:
            log_event("updates_screened_out", level="warning", round=parent.round, refused=refused)
        if reduced is None:
            return None
        steps = np.array([u.env_steps for u in updates], dtype=np.float64)
        loss = np.array([u.metrics.loss for u in updates], dtype=np.float64)
        metrics = {
            "loss": float(np.sum(steps * loss) / steps.sum()),
            "episodes": float(sum(u.metrics.episodes for u in updates)),
        }
        config = self.setup.config  # under secure aggregation a tier above regions pools theirs, sent in the clear
        norm = pooled_stats(stored) if config.stats_travel or config.stats_in_secure_sum else None
        return self._submission(parent, reduced, metrics, norm)

    def _submission(
        self, parent: ParentRound, reduced: Update, metrics: dict[str, float], norm: NormStats | None
    ) -> Submission:
        """``reduced`` as the update the region sends its parent for ``parent``'s round."""
        s = Submission(
            update_id=f"{self.name}.round{parent.round}",
            client=self.name,
            round=parent.round,
            base_version=parent.base_version,
            delta=reduced.delta,
            env_steps=reduced.env_steps,
            metrics=metrics,
            norm=norm,
            clients=reduced.clients,
        )
        return replace(s, digest=s.sent_digest)

    def _drop(self, reason: str) -> None:
        """Close the open parent's round here without forwarding it (its updates are not counted)."""
        log_event(
            "region_round_dropped", level="warning", round=self._round.round, updates=len(self._arrived), reason=reason
        )
        self._close_here(reason)

    def _close_here(self, reason: str | None) -> None:
        """Close the open round (forwarded when ``reason`` is None) and wait for the parent's next."""
        round_ = self._round
        records = self._store.round_records(round_.round)
        self._store.close_round(round_.round, self._clock(), None, None, self._deployed.version)
        for r in records:
            self._store.remove_update_file(r["update_id"])
        self._store.set_meta(FORWARDING, "")
        self._outgoing.clear()
        self._parent, self._outbox, self._forwarding, self._closing = None, None, False, False
        self.ready.clear()
        self._open_next_round()
        if reason is not None:
            log_event("region_round_closed", round=round_.round, forwarded=False, reason=reason)
