"""The edge agent: one device that acts in its own environment all the time, learns from its
own experience, and shares only updates with the server -- and outlives the server.

``Agent.run`` takes up what a previous run left (experiment, acting policy, recorded experience,
pending update), registers (learning the experiment), makes the device's environment
(``fedrl.edge.device_env``: named on the device, checked against the experiment's spaces) and
starts the acting loop (``fedrl.edge.actor``), which steps the environment with the deployed
version from then on. It starts a heartbeat thread, pushes any update left pending, then asks the
server what to do, over and over:

- ``Task``: act with the task's base version until the acting loop has recorded the local budget
  of fresh experience with it, learn from that experience (``fedrl.edge.trainer``; with an update
  pipeline, the update is its encoded payload), write the update to disk
  (``fedrl.wire.pending``), push it, and forget it after the ``Ack``;
- ``Wait``: sleep as told; when the run is finished, keep acting with the final deployed version
  and keep following new ones (or return, with ``until_finished``).

Acting never waits for training or the network: the acting loop runs in its own thread and a new
version is swapped in between two decisions (``fedrl.edge.acting``).

Failures. ``Unreachable`` (server down, restarting, network gone, or UNAVAILABLE: an
asynchronous server whose buffers are full, which keeps nothing): back off with jitter
(``fedrl.edge.backoff``) and try again, forever -- a device never gives up on its server.
``Rejected`` for the credentials (UNAUTHENTICATED, PERMISSION_DENIED) and ``Untrusted`` (the
server's certificate does not verify) raise ``Fatal``, as do an experiment that names code for
the device to import and an environment whose spaces differ from the experiment's: these must
fail loudly, not loop. RESOURCE_EXHAUSTED (a rate limit) is retried with backoff a few times. Any
other ``Rejected`` is logged; a refused update is dropped.
``stop()`` (SIGTERM, SIGINT) ends the loop at the next call or wait; what is on disk stays.

Everything that must survive a restart lives in ``AgentConfig.state_dir``: the experiment
(``experiment.yaml``), the pending update, the learner state (with the update pipeline's
error-feedback residual), the recorded experience and the acting policy. One agent at a time may
use a folder (a lock file says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import gymnasium as gym
import numpy as np

from fedrl.agents import dqn
from fedrl.agents.runtime import set_threads, torch_threads
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import decode_update
from fedrl.core.secagg import SecAggConfig
from fedrl.core.securestats import to_words, word_count
from fedrl.edge.acting import ActingPolicy, clear_acting, load_acting, save_acting
from fedrl.edge.actor import Actor
from fedrl.edge.backoff import BackoffConfig, backoff_delay
from fedrl.edge.device import CREDENTIAL_REASONS, Fatal, event, locked, refused_credentials
from fedrl.edge.device_env import DeviceEnvSpec, EnvUnusable, make_env
from fedrl.edge.failover import FailoverLink
from fedrl.edge.health import HealthBeat
from fedrl.edge.limits import HOOK_POLL_S, OwnerLimits, Triggers, load_hook, nice_this_thread, rss_mb
from fedrl.edge.link import Link, Unreachable, Untrusted
from fedrl.edge.personal import Personalization, Personalizer
from fedrl.edge.recorder import EXPERIENCE_FILE, Recorder
from fedrl.edge.secure import run_secure_round
from fedrl.edge.trainer import LEARNER_FILE, STAGED_FILE, EdgeTrainer, LocalState, LocalUpdate, trainer_from_yaml
from fedrl.envs import FAMILIES
from fedrl.experiment.config import ConfigError
from fedrl.policy.usercode import only_code
from fedrl.wire import disk
from fedrl.wire.pending import PendingStore, new_submission
from fedrl.wire.records import Model, Reason, Registration, Rejected, SecureReply, SecureStep, Submission, Task

T = TypeVar("T")
EXPERIMENT_FILE = "experiment.yaml"
SENT_FILE = "sent.json"  # through a FailoverLink: the last synchronous round trained for, its base, server, digest
EXPERIENCE_SAVE_S = 300.0  # between two saves of the recorded experience, outside training
EXHAUSTED_RETRIES = 5  # then a RESOURCE_EXHAUSTED refusal is final (e.g. an update over the size limit)


SKIPPED_TASK_WAIT_S = 1.0  # a task for a round already sent: ask again after this (a new version wakes sooner)


class _Stopped(Exception):
    """``stop()`` was called while the agent waited."""


@dataclass(frozen=True)
class AgentConfig:
    """How one edge agent runs."""

    state_dir: Path
    """Where the agent keeps what must survive a restart (pending update, learner state, experience, acting policy)."""
    client_index: int = 0
    """This device's client in the experiment, 0 .. n_clients - 1: its random streams, and with a
    built-in family its row of physical parameters."""
    env: DeviceEnvSpec | None = None
    """The environment this device acts in; None: the experiment's built-in family, simulated."""
    explore: bool = True
    """Act as the learner explores (a draw from the policy; epsilon-greedy for DQN); else greedily."""
    act_period_s: float = 0.0
    """Seconds between two decisions at least (0: as fast as the environment steps)."""
    until_finished: bool = False
    """Return when the run is finished, rather than keep acting and following new versions."""
    experience_capacity: int = 20_000
    """Transitions the device keeps recorded (at least a round's budget is needed)."""
    limits: OwnerLimits = field(default_factory=OwnerLimits)
    """What the device's owner allows training to use, and when."""
    triggers: Triggers = field(default_factory=Triggers)
    """When the device asks for work; none set: whenever it is free."""
    personalization: Personalization = field(default_factory=Personalization)
    """A personal copy of each deployed version, kept while it does better here (steps 0: none)."""
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    """Waits between attempts to reach the server."""
    heartbeat_s: float = 10.0
    """Heartbeat period when the server's registration gives none."""
    jitter_seed: int | None = None
    """Seed of the backoff jitter; None (on a device) draws it from the operating system."""
    allow_code: tuple[str, ...] = ()
    """The experiment's own network or learner loss (``module:function``) this device may run; a
    name the server sends that is not here is refused (``fedrl.policy.usercode.only_code``)."""


def device_env(trainer: EdgeTrainer, spec: DeviceEnvSpec | None) -> gym.Env:
    """The device's environment for ``trainer``'s experiment; ``Fatal`` naming both sides when
    it cannot be made or does not have the experiment's spaces."""
    if spec is None:
        family = trainer.setup.config.env.family
        if family not in FAMILIES:
            raise Fatal(
                f"the experiment's env.family is {family!r}: this device must bring its own environment (--env)"
            )
        spec = DeviceEnvSpec(family)
    try:
        return make_env(spec, trainer.setup, trainer.index)
    except EnvUnusable as exc:
        raise Fatal(str(exc)) from None


def recorder_for(trainer: EdgeTrainer, capacity: int) -> Recorder:
    """An empty record of transitions shaped for ``trainer``'s spaces, holding a round at least."""
    shape = trainer.setup.net.shape
    action = ((shape.action_dim,), np.float32) if shape.continuous else ((), np.int64)
    budget = trainer.setup.budget.steps or 0
    return Recorder(max(capacity, 2 * budget), shape.obs_dim, *action)


class Agent:
    """One device's connection to the federation: trains when asked, acts with the deployed version."""

    def __init__(self, link: Link, config: AgentConfig) -> None:
        self.link, self.config = link, config
        self.acting = ActingPolicy()
        self.pending = PendingStore(config.state_dir)
        self._stop, self._wake = threading.Event(), threading.Event()
        self._rng = np.random.default_rng(config.jitter_seed)
        self._failures = 0  # consecutive calls without a useful answer: the backoff exponent
        self._deployed: int | None = None
        self._fatal: Fatal | None = None  # raised in the heartbeat thread, re-raised by run
        self._client, self._experiment = "", ""
        self._trainer: EdgeTrainer | None = None
        self._local: LocalState | None = None
        self._models: dict[int, Model] = {}
        self._finished = False
        self._hook: Callable[[], bool] | None = None  # the owner's train-when hook, loaded by run
        self._experience_saved_at = 0.0
        self._asked_at = (0, 0)  # the acting loop's (steps, episodes) when the device last trained
        self._training = ThreadPoolExecutor(1, thread_name_prefix="fedrl-train", initializer=self._budget_thread)
        self._actor: Actor | None = None
        self._personalizer: Personalizer | None = None
        self._recorder: Recorder | None = None
        self._answered_at: float | None = None  # when the server last answered a heartbeat
        self._sent = Sent()  # through a FailoverLink: the last synchronous round this device trained for

    def stop(self) -> None:
        """Ask ``run`` to return at its next call or wait (safe from a signal handler or thread)."""
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Serve until the server says the run is finished or ``stop`` is called; ``Fatal``
        when the server refuses the credentials or the experiment cannot be trained here."""
        state_dir = disk.private_dir(self.config.state_dir)
        heartbeat = None
        health = HealthBeat(state_dir, self._health)
        with locked(state_dir), only_code(self.config.allow_code):
            health.start()
            try:
                self._hook = self._owner_hook()
                self._restore()
                registration = self._register()
                period = registration.heartbeat_s if registration.heartbeat_s > 0 else self.config.heartbeat_s
                heartbeat = threading.Thread(
                    target=self._heartbeats, args=(period,), name="fedrl-heartbeat", daemon=True
                )
                heartbeat.start()
                self._push_pending()
                while not self._stop.is_set():
                    self._step()
            except _Stopped:
                pass
            finally:
                self.stop()
                if heartbeat is not None:
                    heartbeat.join()
                self._stop_acting()
                self._training.shutdown()
                health.stop()
        if self._fatal is not None:
            raise self._fatal
        event(logging.INFO, "stopped", client=self._client, acting_version=self.acting.version)

    def _budget_thread(self) -> None:
        """Make the training thread the owner's: its niceness and torch threads (both per thread)."""
        limits = self.config.limits
        nice_this_thread(limits.nice)
        if limits.threads is not None:
            set_threads(limits.threads)
        event(logging.INFO, "training_thread", torch_threads=torch_threads(), nice_added=limits.nice)

    def _owner_hook(self) -> Callable[[], bool] | None:
        """Start the training thread on the owner's budget; the hook that says when training may
        run (``Fatal`` when it cannot be loaded)."""
        self._training.submit(lambda: None).result()
        limits = self.config.limits
        if limits.train_when is None:
            return None
        try:
            return load_hook(limits.train_when, limits.hook_dir)
        except ValueError as exc:
            raise Fatal(str(exc)) from None

    def _may_train(self, task: Task, deadline: float) -> bool:
        """Whether the owner's limits let this task be trained: resident memory under the ceiling,
        and the hook (asked again every second until the task's deadline) agreeing."""
        limits = self.config.limits
        if limits.max_rss_mb is not None and (used := rss_mb()) > limits.max_rss_mb:
            event(
                logging.WARNING,
                "over_memory_budget",
                round=task.round,
                rss_mb=round(used, 1),
                max_rss_mb=limits.max_rss_mb,
            )
            return False
        said_no = False
        while self._hook is not None and not self._hook():
            if not said_no:
                event(logging.INFO, "training_deferred", round=task.round, hook=limits.train_when)
                said_no = True
            if time.monotonic() + HOOK_POLL_S > deadline:
                event(
                    logging.WARNING, "training_skipped", round=task.round, reason="the hook said no until the deadline"
                )
                return False
            if self._stop.wait(HOOK_POLL_S):
                raise _Stopped
        return True

    def _train_in_budget(self, *args: object) -> tuple[LocalUpdate, LocalState]:
        """``EdgeTrainer.train(*args)`` in the training thread (the owner's niceness and threads);
        the acting loop goes on meanwhile."""
        return self._training.submit(self._trainer.train, *args).result()

    def _may_ask(self) -> bool:
        """Whether the device's triggers let it ask for work now (always, without triggers)."""
        actor, triggers = self._actor, self.config.triggers
        if not triggers.any or actor is None:
            return True
        recent = list(actor.returns)[-10:]
        steps, episodes = actor.steps - self._asked_at[0], actor.episodes - self._asked_at[1]
        return triggers.hold(steps, episodes, float(np.mean(recent)) if recent else None)

    @property
    def actor(self) -> Actor | None:
        """The acting loop, once the device knows its experiment."""
        return self._actor

    def _start_acting(self) -> None:
        """Make the device's environment and start acting in it (with the current policy, or as
        soon as one arrives), taking up the experience a previous run recorded."""
        self._stop_acting()
        trainer, config = self._trainer, self.config
        env = device_env(trainer, config.env)
        recorder = recorder_for(trainer, config.experience_capacity)
        try:
            recorder.restore(config.state_dir)
        except ValueError as exc:
            event(logging.WARNING, "experience_dropped", error=str(exc))
        learner, before = trainer.setup.config.learner, recorder.total  # DQN's schedule goes on after a reboot
        epsilon = None
        if learner.name == "dqn":
            epsilon = lambda steps: float(dqn.epsilon(learner, np.array([before + steps]))[0])  # noqa: E731
        seed = None if config.jitter_seed is None else config.jitter_seed + 1
        self._recorder = recorder
        self._actor = Actor(env, self.acting, recorder, seed, epsilon, config.explore, config.act_period_s)
        self._personalizer = None
        if config.personalization.steps > 0:
            self._personalizer = Personalizer(
                config.personalization, trainer, recorder, self._actor, self.acting, self._train_in_budget
            )
        self._actor.start()

    def _stop_acting(self) -> None:
        """Stop the acting loop and keep its experience on disk."""
        if self._actor is not None:
            self._actor.stop()
            self._save_experience(force=True)
            self._actor = None

    def _save_experience(self, force: bool = False) -> None:
        """Write the recorded experience to disk: always when ``force``d (after training, at stop),
        else at most every ``EXPERIENCE_SAVE_S`` (a device that acts for months must not wear out
        its flash)."""
        now = time.monotonic()
        if self._recorder is not None and (force or now - self._experience_saved_at >= EXPERIENCE_SAVE_S):
            self._recorder.save(self.config.state_dir)
            self._experience_saved_at = now

    # -- start-up ---------------------------------------------------------------------------

    def _restore(self) -> None:
        """Take up the experiment, learner state and acting policy a previous run left, so the
        device acts again before it reaches the server."""
        self._sent = Sent.read(Path(self.config.state_dir) / SENT_FILE)
        path = Path(self.config.state_dir) / EXPERIMENT_FILE
        if not path.exists():
            return
        try:
            text = path.read_text()
            trainer = trainer_from_yaml(text, self.config.client_index)
            local = trainer.restore(self.config.state_dir, pending=self.pending.path.exists())
            blank = trainer.policy(0, trainer.setup.initial_params(), local, 0.0).card
            policy = load_acting(self.config.state_dir, blank)
        except (OSError, ValueError) as exc:  # ConfigError is a ValueError
            event(logging.WARNING, "stored_state_ignored", error=str(exc))
            return
        self._experiment, self._trainer, self._local = text, trainer, local
        self.acting.swap(policy)
        self._start_acting()
        event(logging.INFO, "restored", acting_version=self.acting.version)

    def _register(self) -> Registration:
        """Register (retrying until answered) and adopt the experiment the server trains."""
        while True:
            try:
                registration = self._call("register", self.link.register)
                break
            except Rejected as exc:
                self._pause("refused", call="register", reason=exc.reason.value, message=exc.message)
        self._client = registration.client
        if registration.experiment_yaml != self._experiment:
            self._adopt(registration.experiment_yaml)
        self._learn_deployed(registration.deployed_version)
        event(
            logging.INFO,
            "registered",
            client=registration.client,
            deployed_version=registration.deployed_version,
            client_index=self.config.client_index,
            heartbeat_s=registration.heartbeat_s,
        )
        return registration

    def _adopt(self, experiment_yaml: str) -> None:
        """Start afresh on a new experiment: the old learner state and acting policy go."""
        try:
            trainer = trainer_from_yaml(experiment_yaml, self.config.client_index)
            local = trainer.fresh_state()
        except ConfigError as exc:
            raise Fatal(f"cannot train the server's experiment here: {exc}") from None
        self._stop_acting()
        device_env(trainer, self.config.env).close()  # refuse an environment that does not fit, before forgetting
        state_dir = Path(self.config.state_dir)
        clear_acting(state_dir)
        for name in (LEARNER_FILE, STAGED_FILE, EXPERIENCE_FILE, SENT_FILE):
            disk.remove(state_dir / name)
        self._sent = Sent()
        disk.write_atomic(state_dir / EXPERIMENT_FILE, experiment_yaml.encode())
        self._experiment, self._trainer, self._local, self._models = experiment_yaml, trainer, local, {}
        self.acting.swap(None)
        self._recorder = None
        self._start_acting()

    def _push_pending(self) -> None:
        """Push the update a previous run trained but never saw acknowledged."""
        try:
            submission = self.pending.load()
        except ValueError as exc:
            event(logging.WARNING, "pending_dropped", error=str(exc))
            self.pending.clear()
            return
        if submission is None:
            return
        if submission.client != self._client:
            event(
                logging.WARNING,
                "pending_dropped",
                update_id=submission.update_id,
                error=f"trained as client {submission.client}, registered as {self._client}",
            )
            self.pending.clear()
            return
        event(logging.INFO, "resubmitting", update_id=submission.update_id, round=submission.round)
        if (
            isinstance(self.link, FailoverLink)
            and self._sent.round == submission.round
            and self._sent.server is not None
        ):
            self.link.expect(submission.round, self._sent.server)  # it goes where its task came from
        if self._sent.round < submission.round:  # stopped between saving the update and noting its round
            self._note_sent(submission.round, submission.base_version)
        self._push(submission)

    # -- the loop ---------------------------------------------------------------------------

    def _step(self) -> None:
        """Follow the deployed version, then (when the triggers allow) do what the server asks."""
        self._check_acting()
        self._follow_deployed()
        if self._personalizer is not None:
            self._personalizer.advance(self._local)
        if not self._may_ask():
            self._sleep(0.05)
            return
        try:
            reply = self._call("task", self.link.task)
        except Rejected as exc:
            self._pause("refused", call="task", reason=exc.reason.value, message=exc.message)
            if exc.reason is Reason.NOT_FOUND:  # the server has forgotten this client
                self._register()
            return
        if isinstance(reply, Task) and self._sent_already(reply):
            event(logging.INFO, "task_skipped", round=reply.round, reason="this device trained for this round already")
            self._sleep(SKIPPED_TASK_WAIT_S)
        elif isinstance(reply, Task):
            self._train(reply)
        elif reply.finished:
            self._finish(reply.reason, reply.retry_after_s)
        else:
            event(logging.DEBUG, "wait", seconds=reply.retry_after_s, reason=reply.reason)
            self._save_experience()
            self._sleep(reply.retry_after_s)

    @property
    def _once_a_round(self) -> bool:
        """Whether the device trains once per round: synchronous rounds, reached through a ``FailoverLink``."""
        return isinstance(self.link, FailoverLink) and not self._trainer.setup.config.asynchronous

    def _sent_already(self, task: Task) -> bool:
        """Whether this device, reaching several servers of a hierarchy (a ``FailoverLink``), trained an
        update for ``task``'s synchronous round already: one of them may have stored it though its
        answer was lost, so a round counts a device once only if it trains once a round. (A device of
        one server trains again for a round whose update was refused, as the server allows.)"""
        if not self._once_a_round:
            return False
        if (task.round, task.base_version) != (self._sent.round, self._sent.base_version):
            return False  # another round; in a new run of the experiment the same numbers come round again
        return self._sent.digest is None or self._sent.digest == _digest(self._model(task.base_version))

    def _note_sent(self, round_: int, base_version: int, model: Model | None = None) -> None:
        """Through a ``FailoverLink``: remember, on disk, the synchronous round this device trained for,
        the server whose task it was and a digest of the version it trained from (which tells this run's
        round from the same round of a later run)."""
        if not self._once_a_round:
            return
        digest = None if model is None else _digest(model)
        self._sent = Sent(round_, base_version, self.link.server_of(round_), digest)
        disk.write_atomic(Path(self.config.state_dir) / SENT_FILE, json.dumps(dataclasses.asdict(self._sent)).encode())

    def _finish(self, reason: str, retry_after_s: float) -> None:
        """The run is over: act with the final deployed version if the server answers at once
        (a server that exits when its run is over must not keep the device waiting); then stop
        (``until_finished``) or keep acting, asking again later for new versions."""
        try:
            self._learn_deployed(self.link.heartbeat(self.acting.version))
            self._follow_deployed(patient=False)
        except (Unreachable, Rejected) as exc:
            event(logging.WARNING, "final_version_unknown", error=str(exc))
        if not self._finished:
            self._finished = True
            event(logging.INFO, "finished", reason=reason, acting_version=self.acting.version, **self._acting_stats())
        if self.config.until_finished:
            self.stop()
            return
        self._save_experience()
        self._sleep(max(retry_after_s, self.config.heartbeat_s))

    def _train(self, task: Task) -> None:
        """Train from the task's base version; the update is on disk before it is pushed."""
        try:
            model = self._model(task.base_version)
        except Rejected as exc:
            self._pause("refused", call="pull", version=task.base_version, reason=exc.reason.value, message=exc.message)
            return
        event(logging.INFO, "task", round=task.round, base_version=task.base_version, deadline_s=task.deadline_s)
        deadline = time.monotonic() + task.deadline_s
        try:
            if self._await_experience(task, model, deadline) and self._may_train(task, deadline):
                self._learn(task, model)
        finally:
            if self._personalizer is not None:
                self._personalizer.resume()

    def _learn(self, task: Task, model: Model) -> None:
        """Learn from the fresh experience of the task's base version; stage the new learner state,
        save the update, then (both on disk) count the experience used and push the update."""
        experience, upto = self._recorder.take(task.base_version, self._trainer.setup.budget.steps)
        self._asked_at = (self._actor.steps, self._actor.episodes)
        started = time.monotonic()
        update, local = self._train_in_budget(
            self._local, model.params, task.round, experience, task.server_control, task.norm
        )
        seconds = time.monotonic() - started
        submission = new_submission(
            self._client,
            task.round,
            task.base_version,
            update.delta,
            update.env_steps,
            update.metrics.as_mapping(),
            update.control_delta,
            update.payload,
            update.norm,
        )
        self._trainer.save_learner(self.config.state_dir, local, staged=True)
        secure = self._trainer.setup.config.pipeline.secure_aggregation
        if not secure.enabled:  # a masked update cannot be resent after a restart: its keys are gone
            self.pending.save(submission)
        self._note_sent(task.round, task.base_version, model)
        self._recorder.mark_used(upto)
        self._save_experience(force=True)
        self._local = local
        event(
            logging.INFO,
            "trained",
            round=task.round,
            base_version=task.base_version,
            env_steps=update.env_steps,
            loss=update.metrics.loss,
            seconds=seconds,
            update_id=submission.update_id,
            bytes=submission.sent_bytes,
            **self._acting_stats(),
        )
        if seconds > task.deadline_s:
            event(logging.WARNING, "late", round=task.round, seconds=seconds, deadline_s=task.deadline_s)
        if secure.enabled:
            self._send_masked(task, update, secure)
        else:
            self._push(submission)

    def _send_masked(self, task: Task, update: LocalUpdate, config: SecAggConfig) -> None:
        """Take part in the round's secure aggregation with this update (``fedrl.edge.secure``);
        a round that fails, or goes on without this device, drops the update."""
        dim = self._trainer.setup.net.spec.dim
        x = update.delta if update.payload is None else decode_update(update.payload, dim)

        def ask(step: SecureStep, payload: bytes) -> SecureReply:
            return self._call("secure", lambda: self.link.secure(task.round, step, payload))

        def stepped(step: SecureStep, reply: SecureReply) -> None:
            event(logging.INFO, "secure_step", round=task.round, step=step.name.lower(), threshold=reply.threshold)

        try:
            run_secure_round(ask, x, config, self._sleep, stepped, extra=self._statistics_words(update, task.norm))
        except Rejected as exc:
            event(logging.WARNING, "update_dropped", round=task.round, reason=exc.reason.value, message=exc.message)
        self._trainer.commit_learner(self.config.state_dir)

    def _statistics_words(self, update: LocalUpdate, center: NormStats | None) -> np.ndarray | None:
        """The words this device adds to the secure sum for its statistics (the fleet's under secure
        aggregation), around ``center`` (the fleet's the task carried, which the server shares); all
        zeros, adding nothing, for statistics the fixed point cannot carry."""
        setup = self._trainer.setup
        if not setup.config.stats_in_secure_sum:
            return None
        try:
            return to_words(update.norm, center)
        except ValueError as exc:
            event(logging.WARNING, "statistics_withheld", reason=str(exc))
            return np.zeros(word_count(*setup.statistics_layout), dtype=np.uint32)

    def _push(self, submission: Submission) -> None:
        """Push until answered; forget the update once acknowledged or refused."""
        try:
            ack = self._call("push", lambda: self.link.push(submission))
        except Rejected as exc:
            event(
                logging.WARNING,
                "update_dropped",
                update_id=submission.update_id,
                round=submission.round,
                reason=exc.reason.value,
                message=exc.message,
            )
        else:
            event(logging.INFO, "acknowledged", update_id=ack.update_id, round=ack.round, duplicate=ack.duplicate)
        self._trainer.commit_learner(self.config.state_dir)
        self.pending.clear()

    def _await_experience(self, task: Task, model: Model, deadline: float) -> bool:
        """Act with the task's base version until the acting loop has recorded the round's budget
        of fresh experience with it (REINFORCE: and one finished episode), or the deadline passes;
        False when it passes with nothing to learn from (the server gives the round to others)."""
        current = self.acting.current
        if current is None or current.tag != task.base_version or current.greedy:
            policy = self._trainer.policy(task.base_version, model.params, self._local, time.time(), model.norm)
            if current is None or current.tag != task.base_version:  # a new version: on record, as when following
                save_acting(self.config.state_dir, policy)
            self.acting.swap(policy)
            event(logging.INFO, "acting", version=task.base_version, reason="task")
        budget = self._trainer.setup.budget
        needs_episode = self._trainer.setup.config.learner.name == "reinforce"  # returns need an episode's end
        while True:
            steps, episodes = self._recorder.fresh(task.base_version)
            enough = budget.spent(np.array([steps]), np.array([episodes])) and (episodes > 0 or not needs_episode)
            if enough:
                return True
            self._check_acting()
            if time.monotonic() > deadline:
                usable = steps > 0 and (episodes > 0 or not needs_episode)
                if not usable:
                    event(logging.WARNING, "no_experience", round=task.round, deadline_s=task.deadline_s)
                return usable
            if self._stop.wait(0.01):
                raise _Stopped

    def _check_acting(self) -> None:
        """``Fatal`` when the acting loop has stopped (its environment failed)."""
        if self._actor is not None and not self._actor.alive and self._actor.error is not None:
            raise Fatal(f"the device's environment stopped acting: {self._actor.error}")

    def _health(self) -> dict[str, object]:
        """What ``health.json`` says: whether the acting loop runs, with which version, and when
        the server last answered."""
        actor = self._actor
        return {
            "acting": actor is None or actor.alive,
            "acting_version": self.acting.version,
            "acting_steps": 0 if actor is None else actor.steps,
            "server_answered_at": self._answered_at,
        }

    def _acting_stats(self) -> dict[str, object]:
        """What the acting loop did, for the log: steps, episodes, recent mean return, latency."""
        actor = self._actor
        if actor is None:
            return {}
        recent = list(actor.returns)[-10:]
        latency = actor.latency_us()
        return {
            "acting_steps": actor.steps,
            "acting_episodes": actor.episodes,
            "recent_return": float(np.mean(recent)) if recent else None,
            "act_p50_us": round(latency["p50"], 1),
            "act_p99_us": round(latency["p99"], 1),
        }

    # -- the deployed version ---------------------------------------------------------------

    def _learn_deployed(self, version: int) -> None:
        """Note the version the server deploys; a change wakes the loop to act with it."""
        if version != self._deployed:
            self._deployed = version
            self._wake.set()

    def _follow_deployed(self, patient: bool = True) -> None:
        """Swap the acting policy to the deployed version if it is not acting already
        (``patient``: pull through an unreachable server; else ``Unreachable`` is raised)."""
        version = self._deployed
        if version is None or version == self.acting.version:
            return
        try:
            model = self._model(version, patient)
        except Rejected as exc:
            event(
                logging.WARNING, "refused", call="pull", version=version, reason=exc.reason.value, message=exc.message
            )
            return
        policy = self._trainer.policy(version, model.params, self._local, time.time(), model.norm)
        save_acting(self.config.state_dir, policy)  # first: a reboot acts with what acted last
        self.acting.swap(policy)
        if self._personalizer is not None:
            self._personalizer.restart(policy, model.params, model.norm)
        event(logging.INFO, "acting", version=version, eval_return=model.eval_return)

    def _model(self, version: int, patient: bool = True) -> Model:
        """Global version ``version``, pulled unless held (``patient``: retrying while the server
        is unreachable; else once); keeps it and the deployed one."""
        if version not in self._models:
            pull = lambda: self.link.pull(version)  # noqa: E731
            model = self._call("pull", pull) if patient else pull()
            dim = self._trainer.setup.net.spec.dim
            if np.shape(model.params) != (dim,):
                raise Fatal(
                    f"the server's version {version} has {np.size(model.params)} parameters; "
                    f"its experiment's network has {dim}"
                )
            self._models = {v: m for v, m in self._models.items() if v == self._deployed} | {version: model}
        return self._models[version]

    def _heartbeats(self, period: float) -> None:
        """Every ``period`` seconds: say which version acts, learn which one is deployed."""
        while not self._stop.wait(period):
            try:
                self._learn_deployed(self.link.heartbeat(self.acting.version))
                self._answered_at = time.time()
            except Unreachable as exc:
                event(logging.DEBUG, "heartbeat_unanswered", error=str(exc))
            except Rejected as exc:
                if exc.reason in CREDENTIAL_REASONS:
                    self._fatal = refused_credentials(exc)
                    self.stop()
                    return
                event(logging.WARNING, "refused", call="heartbeat", reason=exc.reason.value, message=exc.message)

    # -- waiting ----------------------------------------------------------------------------

    def _call(self, name: str, call: Callable[[], T]) -> T:
        """``call()`` until the server answers it; while it is unreachable, back off and retry.
        RESOURCE_EXHAUSTED (over the rate or concurrency limit) is retried a few times too: it
        usually means "later", and a resent update is acknowledged once."""
        exhausted = 0
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                answer = call()
            except Unreachable as exc:
                self._pause("unreachable", call=name, error=str(exc))
                continue
            except Untrusted as exc:
                raise Fatal(str(exc)) from None
            except Rejected as exc:
                if exc.reason in CREDENTIAL_REASONS:
                    raise refused_credentials(exc) from None
                if exc.reason is Reason.RESOURCE_EXHAUSTED and exhausted < EXHAUSTED_RETRIES:
                    exhausted += 1
                    self._pause("slowed_down", call=name, message=exc.message)
                    continue
                raise
            self._failures = 0
            return answer

    def _pause(self, name: str, **fields: object) -> None:
        """Log a failed call and wait the backoff delay for one more consecutive failure."""
        delay = backoff_delay(self.config.backoff, self._failures, self._rng)
        self._failures += 1
        event(logging.WARNING, name, attempt=self._failures, retry_in_s=delay, **fields)
        if self._stop.wait(delay):
            raise _Stopped

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when a new version is deployed or the agent stops."""
        self._wake.wait(seconds)
        self._wake.clear()
        if self._stop.is_set():
            raise _Stopped


@dataclass(frozen=True)
class Sent:
    """The last synchronous round a device reaching several servers trained an update for."""

    round: int = -1
    base_version: int = -1
    server: int | None = None  # the index of the server whose task it was (its FailoverLink's), if known
    digest: str | None = None  # of the version it trained from, when known

    @classmethod
    def read(cls, path: Path) -> Sent:
        """What ``path`` holds; nothing sent when there is no such file or it is unreadable."""
        try:
            record = json.loads(path.read_text())
            server, digest = record.get("server"), record.get("digest")
            return cls(
                int(record["round"]),
                int(record["base_version"]),
                None if server is None else int(server),
                None if digest is None else str(digest),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls()


def _digest(model: Model) -> str:
    """A short digest of a version's parameters: a new run's version N differs from an old run's."""
    return hashlib.sha256(np.ascontiguousarray(model.params).tobytes()).hexdigest()[:16]
