"""A device that only runs the policy: the torch-free inference runtime behind ``fedrl act``.

``Follower`` acts in the device's environment with a policy loaded by ``fedrl.policy`` (an
exported artifact, or what this state folder acted with last), greedily, at the environment's
pace (``fedrl.edge.actor``). Given a link to a server (gRPC or MQTT) it registers, says in its
heartbeats which version acts, pulls each newly deployed version, checks it against the policy's
card (layout, finite values; the transfer itself is digest-checked by the link) and swaps it in
between two decisions; ``acting.safetensors`` keeps it for a reboot. Nothing here imports torch,
gymnasium, pydantic or the training stack: numpy, the links and the environment's own imports.

``make_env`` makes the environment from ``module:function`` (called with keyword arguments) or,
when Gymnasium is installed, a registered id; ``spaces_problem`` checks it against the card.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedrl.edge.acting import ActingPolicy, Policy, load_acting, save_acting
from fedrl.edge.actor import Actor
from fedrl.edge.backoff import BackoffConfig, backoff_delay
from fedrl.edge.device import CREDENTIAL_REASONS, Fatal, event, load_callable, locked, refused_credentials
from fedrl.edge.health import HealthBeat
from fedrl.edge.link import Link, Unreachable, Untrusted
from fedrl.policy.card import ObsNorm, PolicyCard
from fedrl.policy.runtime import Policy as Runtime
from fedrl.wire import disk
from fedrl.wire.records import Reason, Rejected


def make_env(entry: str, kwargs: dict[str, Any], search_dir: Path | None = None) -> Any:
    """The environment ``entry`` names: ``module:function`` called with ``kwargs`` (its module looked
    up in ``search_dir`` first), else a Gymnasium id (Gymnasium imported only then)."""
    if ":" in entry and "/" not in entry.partition(":")[0]:
        try:
            return load_callable(entry, search_dir, "--env")(**kwargs)
        except ValueError as exc:
            raise Fatal(str(exc)) from None
    try:
        gymnasium = importlib.import_module("gymnasium")
    except ImportError:
        raise Fatal(f"--env {entry}: a Gymnasium id needs gymnasium installed; or give module:function") from None
    return gymnasium.make(entry, **kwargs)


def spaces_problem(card: PolicyCard, env: Any) -> str | None:
    """Why ``env`` cannot run the policy of ``card`` (naming both sides), or None when it can."""
    obs_shape = tuple(getattr(env.observation_space, "shape", ()) or ())
    action = env.action_space
    if card.action.kind == "discrete":
        fits, has = getattr(action, "n", None) == card.action.n, f"{getattr(action, 'n', action)} discrete actions"
    else:
        shape = tuple(getattr(action, "shape", ()) or ())
        fits, has = shape == (card.action.n,), f"actions of shape {shape}"
    if obs_shape == (card.obs_dim,) and fits:
        return None
    wants = f"obs ({card.obs_dim},), {card.action.n} {card.action.kind} actions"
    return f"the policy takes {wants}; this device's environment has obs {obs_shape}, {has}"


class Follower:
    """Acts with a policy all the time and, given a ``link``, follows the server's deployed version."""

    def __init__(
        self,
        policy: Runtime,
        env: Any,
        state_dir: Path,
        link: Link | None = None,
        heartbeat_s: float = 10.0,
        act_period_s: float = 0.0,
        backoff: BackoffConfig | None = None,
        seed: int | None = None,
        max_steps: int | None = None,
    ) -> None:
        problem = spaces_problem(policy.card, env)
        if problem is not None:
            raise Fatal(problem)
        self.card, self.env, self.state_dir, self.link = policy.card, env, Path(state_dir), link
        self.heartbeat_s, self.backoff = heartbeat_s, backoff or BackoffConfig()
        self.acting = ActingPolicy()
        self._start = Policy(policy.version or 0, policy.params, policy.card, time.time())
        self._actor = Actor(env, self.acting, None, seed, explore=False, period_s=act_period_s, max_steps=max_steps)
        self._stop = threading.Event()
        self._rng = np.random.default_rng(seed)
        self._failures = 0
        self._answered_at: float | None = None  # when the server last answered a heartbeat

    @property
    def actor(self) -> Actor:
        """The acting loop (steps, episodes, returns, decision latency)."""
        return self._actor

    def stop(self) -> None:
        """Return from ``run`` at the next wait (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Act until ``stop`` (or the acting loop's ``max_steps``), following the deployed version."""
        state_dir = disk.private_dir(self.state_dir)
        with locked(state_dir):
            policy = self._newest_policy()
            save_acting(state_dir, policy)  # acting.json tells an operator what acts
            self.acting.swap(policy)
            self._actor.start()
            health = HealthBeat(state_dir, self._health)
            health.start()
            try:
                self._serve()
            finally:
                self._actor.stop()
                health.stop()
        if self._actor.error is not None:
            raise Fatal(f"the device's environment stopped acting: {self._actor.error}")
        event(logging.INFO, "stopped", acting_version=self.acting.version, steps=self._actor.steps)

    def _health(self) -> dict[str, object]:
        """What ``health.json`` says: whether the acting loop runs, with which version, and when
        the server last answered."""
        return {
            "acting": self._actor.alive,
            "acting_version": self.acting.version,
            "acting_steps": self._actor.steps,
            "server_answered_at": self._answered_at,
        }

    def _newest_policy(self) -> Policy:
        """The artifact given, or the version this folder acted with last when it is newer."""
        try:
            kept = load_acting(self.state_dir, self.card)
        except ValueError as exc:
            event(logging.WARNING, "stored_state_ignored", error=str(exc))
            kept = None
        return kept if kept is not None and kept.version > self._start.version else self._start

    def _serve(self) -> None:
        """Every ``heartbeat_s``: register once, then report the acting version and follow the deployed one."""
        registered, next_beat = False, 0.0
        while not self._stop.wait(0.01) and self._actor.alive:
            if self.link is None or time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + self.heartbeat_s
            try:
                if not registered:
                    event(logging.INFO, "registered", client=self.link.register().client)
                    registered = True
                self._follow(self.link.heartbeat(self.acting.version))
                self._answered_at = time.time()
                self._failures = 0
            except Unreachable as exc:
                next_beat = time.monotonic() + self._pause_s(str(exc))
            except Untrusted as exc:
                raise Fatal(str(exc)) from None
            except Rejected as exc:
                if exc.reason in CREDENTIAL_REASONS:
                    raise refused_credentials(exc) from None
                registered = registered and exc.reason is not Reason.NOT_FOUND  # forgotten: register again
                event(logging.WARNING, "refused", reason=exc.reason.value, message=exc.message)

    def _follow(self, deployed: int) -> None:
        """Pull, check and swap in ``deployed`` unless it acts already."""
        if deployed == self.acting.version:
            return
        model = self.link.pull(deployed)
        try:
            card = self.card.with_params(model.params, version=deployed)
            if model.norm is not None and model.norm.obs is not None:  # the version's own statistics
                kept = () if card.obs_norm is None else (card.obs_norm.clip, card.obs_norm.eps)
                card = replace(card, obs_norm=ObsNorm.of(model.norm.obs.mean, model.norm.obs.var, *kept))
        except ValueError as exc:
            event(logging.WARNING, "version_refused", version=deployed, error=str(exc))
            return
        params = np.asarray(model.params, dtype=np.float32)
        policy = Policy(deployed, params, card, time.time())
        save_acting(self.state_dir, policy)
        self.acting.swap(policy)
        latency = self._actor.latency_us()
        event(logging.INFO, "acting", version=deployed, steps=self._actor.steps, act_p99_us=round(latency["p99"], 1))

    def _pause_s(self, error: str) -> float:
        """Log an unanswered call; the backoff delay before the next try."""
        delay = backoff_delay(self.backoff, self._failures, self._rng)
        self._failures += 1
        event(logging.WARNING, "unreachable", attempt=self._failures, retry_in_s=delay, error=error)
        return delay
