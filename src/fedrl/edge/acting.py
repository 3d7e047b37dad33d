"""The policy a device acts with, and the hot update that replaces it while the device runs.

``Policy`` is one global version (with the device's personal part, if any) ready to act, run by
``fedrl.policy``'s numpy runtime: ``act(obs)`` is the greedy action; ``explore(obs, rng)`` the
action a learning device takes (a draw from the policy for actor-critic learners, epsilon-greedy
for DQN) together with what the learner records (the unclipped draw of a Gaussian policy).
``ActingPolicy`` holds the current one and swaps in a new version as a whole, under a lock: a
decision is made entirely by the old version or entirely by the new one, and the version changes
between two decisions, with no restart. Each swap is recorded in ``STATE_DIR/acting.json``
(``{"version", "since"}``), for an operator to read, and the parameters, with their policy card,
in ``acting.safetensors`` (``fedrl.load_policy(STATE_DIR)`` runs it), so a rebooted device acts
again before it reaches the server.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedrl.policy.card import PolicyCard
from fedrl.policy.files import read_card
from fedrl.policy.runtime import Policy as Runtime
from fedrl.wire import disk

PARAMS_FILE = "acting.safetensors"
RECORD_FILE = "acting.json"


class Decision(NamedTuple):
    """An action and the global version that chose it."""

    action: Any  # an int for discrete actions, float32 (A,) for continuous ones
    version: int


@dataclass(frozen=True)
class Policy:
    """Global version ``version`` as this device acts with it."""

    version: int
    params: np.ndarray  # float32 (d,): the global params, with the device's personal part if any
    card: PolicyCard
    since: float  # wall-clock seconds when it began to act
    personal: bool = False  # a copy of ``version`` fine-tuned on this device (never sent)
    greedy: bool = False  # act greedily even on a learning device (while it is being evaluated)

    @property
    def tag(self) -> int:
        """What the device's record files this policy's transitions under: the version when they are
        experience of it (the global version, exploring), else ``-1 - version`` (a personal copy, a
        greedy evaluation), which training never takes as experience of the global version."""
        return -1 - self.version if self.personal or self.greedy else self.version

    @cached_property
    def runtime(self) -> Runtime:
        """The numpy runtime that computes the actions (built once per version)."""
        return Runtime(self.card, self.params)

    def act(self, obs: np.ndarray) -> Any:
        """The greedy action for one observation ``(obs_dim,)``."""
        return self.runtime.predict(obs)

    def explore(self, obs: np.ndarray, rng: np.random.Generator, epsilon: float = 0.0) -> tuple[Any, Any]:
        """``(action for the environment, action to record)`` of a learning device: epsilon-greedy
        for a Q network, else a draw from the policy (a Gaussian draw is recorded unclipped)."""
        runtime = self.runtime
        if self.card.q_values:
            action = int(rng.integers(self.card.action.n)) if rng.random() < epsilon else runtime.predict(obs)
            return action, action
        if runtime.bound is None:
            action = int(runtime.predict(obs, deterministic=False, rng=rng))
            return action, action
        mean = runtime.logits_or_mean(np.asarray(obs, dtype=np.float32)[None])[0]
        raw = (mean + runtime.std * rng.standard_normal(mean.shape)).astype(np.float32)
        return np.clip(raw, -runtime.bound, runtime.bound), raw


class ActingPolicy:
    """The device's current policy, replaced whole by ``swap`` while others call ``act``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policy: Policy | None = None

    @property
    def current(self) -> Policy | None:
        """The policy acting now, None before the first model arrived."""
        with self._lock:
            return self._policy

    @property
    def version(self) -> int | None:
        """The version acting now, None before the first model arrived."""
        policy = self.current
        return None if policy is None else policy.version

    def swap(self, policy: Policy | None) -> None:
        """Make ``policy`` the one that decides from the next ``act`` on."""
        with self._lock:
            self._policy = policy

    def act(self, obs: np.ndarray) -> Decision:
        """Decide with the current policy; ``LookupError`` before any model arrived."""
        policy = self.current
        if policy is None:
            raise LookupError("no policy yet: the agent has not received a model from the server")
        return Decision(policy.act(obs), policy.version)


def save_acting(state_dir: Path, policy: Policy) -> None:
    """Record ``policy`` as the acting one in ``state_dir``: parameters and card, then ``acting.json``."""
    header = {"version": policy.version, "since": policy.since}
    disk.save_record(Path(state_dir) / PARAMS_FILE, {"params": policy.params}, header, card=policy.card)
    disk.write_atomic(Path(state_dir) / RECORD_FILE, (json.dumps(header) + "\n").encode())


def load_acting(state_dir: Path, card: PolicyCard) -> Policy | None:
    """The acting policy saved in ``state_dir``, with the observation normalisation it was saved
    with; None when there is none or it does not fit the layout of ``card`` (``ValueError`` when
    the file is unreadable)."""
    path = Path(state_dir) / PARAMS_FILE
    record = disk.load_record(path)
    if record is None:
        return None
    arrays, header = record
    params = arrays.get("params")
    if params is None or params.shape != (card.dim,) or params.dtype != np.float32:
        return None
    version = int(header["version"])
    card = replace(card, obs_norm=read_card(path).obs_norm)
    return Policy(version, params, card.with_params(params, version=version), float(header["since"]))


def clear_acting(state_dir: Path) -> None:
    """Forget the saved acting policy (the experiment changed)."""
    disk.remove(Path(state_dir) / PARAMS_FILE)
    disk.remove(Path(state_dir) / RECORD_FILE)
