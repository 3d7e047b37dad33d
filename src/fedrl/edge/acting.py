"""The policy a device decides with, and the hot update that replaces it while the device runs.

``Policy`` is one global version ready to act: ``act(obs)`` is one greedy forward pass of the
experiment's network (argmax, or the Gaussian mean clipped to the client's action bound).
``ActingPolicy`` holds the current one and swaps in a new version as a whole, under a lock: a
decision is made entirely by the old version or entirely by the new one, and the version
changes between two ``act`` calls, with no restart. Each swap is recorded in
``STATE_DIR/acting.json`` (``{"version", "since"}``), for an operator to read, and the
parameters in ``acting.safetensors``, so a rebooted device acts again before it reaches the
server.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fedrl.agents.distributions import greedy
from fedrl.agents.rollout import env_action
from fedrl.edge.trainer import EdgeTrainer
from fedrl.wire import disk

PARAMS_FILE = "acting.safetensors"
RECORD_FILE = "acting.json"


class Decision(NamedTuple):
    """An action and the global version that chose it."""

    action: np.ndarray  # an index () for discrete actions, reals (A,) for continuous ones
    version: int


@dataclass(frozen=True)
class Policy:
    """Global version ``version`` as client ``trainer.index`` acts with it."""

    version: int
    params: np.ndarray  # float32 (d,): the global params, with the client's personal part if any
    trainer: EdgeTrainer
    since: float  # wall-clock seconds when it began to act

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The greedy action for one observation ``(obs_dim,)``."""
        net, family = self.trainer.setup.net, self.trainer.setup.family
        obs = np.asarray(obs, dtype=np.float32)
        if obs.shape != (family.obs_dim,):
            raise ValueError(f"an observation of {family.name} has shape ({family.obs_dim},), got {obs.shape}")
        weights = net.unpack(torch.from_numpy(self.params).unsqueeze(0))
        heads = net.policy(weights, torch.from_numpy(obs).reshape(1, 1, -1))
        return env_action(family, self.trainer.env_params, greedy(heads))[0, 0]


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
    """Record ``policy`` as the acting one in ``state_dir``: parameters, then ``acting.json``."""
    header = {"version": policy.version, "since": policy.since}
    disk.save_record(Path(state_dir) / PARAMS_FILE, {"params": policy.params}, header)
    disk.write_atomic(Path(state_dir) / RECORD_FILE, (json.dumps(header) + "\n").encode())


def load_acting(state_dir: Path, trainer: EdgeTrainer) -> Policy | None:
    """The acting policy saved in ``state_dir``; None when there is none or it does not fit
    ``trainer``'s network (``ValueError`` when the file is unreadable)."""
    record = disk.load_record(Path(state_dir) / PARAMS_FILE)
    if record is None:
        return None
    arrays, header = record
    params = arrays.get("params")
    if params is None or params.shape != (trainer.setup.net.spec.dim,) or params.dtype != np.float32:
        return None
    return Policy(int(header["version"]), params, trainer, float(header["since"]))


def clear_acting(state_dir: Path) -> None:
    """Forget the saved acting policy (the experiment changed)."""
    disk.remove(Path(state_dir) / PARAMS_FILE)
    disk.remove(Path(state_dir) / RECORD_FILE)
