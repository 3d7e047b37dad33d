"""Local training of one edge client (C = 1) from the global vector the server sent.

A device trains exactly what the simulator trains for one client: the experiment config's
environment family, this client's row of physical parameters, the config's learner and local
budget, and the strategy's client-side terms (FedProx's ``mu``; SCAFFOLD's correction when the
task carries the server's control variate). It reuses the simulator's ``Setup`` (config ->
family, parameters, network, budget), never its round loop.

What the client keeps between rounds is a ``LocalState``: its environments' ongoing episodes
(in memory: after a restart they start afresh) and the learner's ``client_state`` (personal
parameters, SCAFFOLD's ``c_i``, DQN's replay buffer), which ``save_learner`` writes to disk so a
reboot keeps it. Randomness comes from the config seed, the client index and the round, so the
same inputs give the same update bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from fedrl.agents import init_client_state, local_params, make_task, train_local
from fedrl.wire import disk
from fedrl.envs.base import EnvState, reset
from fedrl.sim.config import ConfigError, parse_config
from fedrl.sim.setup import TRAIN_STREAM, Setup

LEARNER_FILE = "learner.safetensors"


class LocalState(NamedTuple):
    """What one client keeps between rounds."""

    env_state: EnvState  # its environments' ongoing episodes, (1, n_envs)
    learner: dict[str, np.ndarray]  # the learner's client_state, arrays with leading axis 1


@dataclass(frozen=True)
class LocalUpdate:
    """One round's result as it leaves the device: no experience, only the change."""

    delta: np.ndarray  # float32 (d,): trained params minus the global params
    env_steps: int
    metrics: dict[str, float]  # "loss" (NaN when no step was taken) and "episodes"
    control_delta: np.ndarray | None  # float32 (d,): SCAFFOLD's c_i+ - c_i; None without a server control


@dataclass(frozen=True)
class EdgeTrainer:
    """Client ``index`` of the experiment ``setup`` describes."""

    setup: Setup
    index: int

    def __post_init__(self) -> None:
        n = self.setup.config.federation.n_clients
        if not 0 <= self.index < n:
            raise ConfigError(
                f"client index {self.index} is not in this experiment: its clients are 0..{n - 1} "
                f"(federation.n_clients = {n})"
            )

    @property
    def env_params(self) -> np.ndarray:
        """This client's physical parameters, ``(1, P)``."""
        return self.setup.env_params[[self.index]]

    def fresh_state(self) -> LocalState:
        """Fresh episodes and the learner state of a client that has never trained."""
        setup = self.setup
        env_state, _ = reset(setup.family, self.env_params, setup.config.learner.n_envs, setup.rng(TRAIN_STREAM, 0, self.index))
        learner = init_client_state(setup.config.learner, setup.net, 1, setup.strategy.uses_control_variates)
        return LocalState(env_state, learner)

    def train(
        self, state: LocalState, params: np.ndarray, round_: int, server_control: np.ndarray | None = None
    ) -> tuple[LocalUpdate, LocalState]:
        """Train from the global ``params`` ``(d,)`` for ``round_``; ``ValueError`` when
        ``params`` or ``server_control`` do not fit this experiment's network."""
        setup = self.setup
        params = np.asarray(params, dtype=np.float32)
        task = make_task(
            setup.net, setup.family, self.env_params, state.env_state, params, setup.strategy.prox_mu,
            setup.rng(TRAIN_STREAM, round_, self.index), client_state=state.learner, server_control=server_control,
        )
        result = train_local(setup.config.learner, task, setup.budget)
        control = None if result.control_delta is None else result.control_delta[0].astype(np.float32)
        update = LocalUpdate(
            (result.params[0] - params).astype(np.float32), int(result.env_steps[0]),
            {"loss": float(result.loss[0]), "episodes": float(result.episodes[0])}, control,
        )
        return update, LocalState(result.env_state, result.client_state)

    def acting_params(self, params: np.ndarray, state: LocalState) -> np.ndarray:
        """``(d,)``: what this client acts with -- the global ``params``, with its personal
        part where only some towers are federated."""
        return local_params(self.setup.config.learner, self.setup.net, params, state.learner, 1)[0]

    def save_learner(self, state_dir: Path, state: LocalState) -> None:
        """Write the learner state durably to ``state_dir``."""
        disk.save_record(Path(state_dir) / LEARNER_FILE, state.learner, {"client_index": self.index})

    def restore(self, state_dir: Path) -> LocalState:
        """Fresh episodes with the learner state saved in ``state_dir``; a fresh learner state
        when none was saved, or it was saved by another client index or another network
        (``ValueError`` when the file is unreadable)."""
        fresh = self.fresh_state()
        record = disk.load_record(Path(state_dir) / LEARNER_FILE)
        if record is None or record[1].get("client_index") != self.index or not _same_layout(record[0], fresh.learner):
            return fresh
        return fresh._replace(learner=record[0])


def _same_layout(saved: dict[str, np.ndarray], fresh: dict[str, np.ndarray]) -> bool:
    return saved.keys() == fresh.keys() and all(
        saved[k].shape == fresh[k].shape and saved[k].dtype == fresh[k].dtype for k in fresh
    )


def trainer_from_yaml(experiment_yaml: str, index: int) -> EdgeTrainer:
    """The trainer of client ``index`` in the experiment the server sent, as YAML;
    ``ConfigError`` in one line when the config is unusable here or ``index`` is not a client."""
    try:
        data = yaml.safe_load(experiment_yaml)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the experiment config is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the experiment config must be a mapping of sections, got {type(data).__name__}")
    return EdgeTrainer(Setup(parse_config(data)), index)
