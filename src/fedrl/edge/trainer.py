"""Local training of one edge client (C = 1) from the global vector the server sent.

A device learns from its own experience: the transitions its acting loop recorded with the
task's base version (``fedrl.agents.experience``), with the experiment's learner, its local
budget and the strategy's client-side terms (FedProx's ``mu``; SCAFFOLD's correction when the
task carries the server's control variate). It builds the experiment's ``Setup`` (config ->
family or spaces, network, budget), as every runtime does.

When the experiment has an update pipeline (``fedrl.core.pipeline``), the delta leaves the device
as the simulator's client would send it: clipped, noised (local DP), compressed with error
feedback and scaled to the clip norm (central DP), encoded as bytes (``LocalUpdate.payload``).

With normalisation (``learner.normalize``) the client starts from the statistics the task carries
(the fleet's, as of the base version) or, with ``stats: personal``, from its own; either way it
sends the statistics of what it observed beside the update, which the server merges into the
next version's (the pooled ones, with personal statistics: for devices that have none yet and
for the saved policy), except personal ones under DP or secure aggregation, which stay here
(``ExperimentConfig.stats_travel``); under secure aggregation the fleet's travel inside the secure
sum (``stats_in_secure_sum``).

What the client keeps between rounds is a ``LocalState``: the learner's ``client_state`` (personal
parameters, SCAFFOLD's ``c_i``, DQN's replay buffer, reward scaling's running returns), the
pipeline's (the error-feedback residual, the rounds taken part in) and its personal normalisation
statistics, which ``save_learner`` writes to disk so a reboot keeps them. Randomness comes from the
config seed, the client index and the round, so the same experience gives the same update bit for
bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedrl.agents import ClientState, init_client_state, local_params, make_task
from fedrl.agents.experience import Experience, train_from_experience
from fedrl.agents.normalize import init_stats
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import PipelineState, after_sending, client_message, init_pipeline_state
from fedrl.core.rows import from_arrays, to_arrays
from fedrl.core.update import UpdateMetrics
from fedrl.edge.acting import Policy
from fedrl.experiment.card import policy_card
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import read_from_server
from fedrl.experiment.setup import Setup
from fedrl.experiment.streams import PIPELINE_STREAM, TRAIN_STREAM
from fedrl.wire import disk

LEARNER_FILE = "learner.safetensors"
STAGED_FILE = "learner.next.safetensors"  # the state after the pending update, until it is answered
PIPELINE_PREFIX = "pipeline."  # the pipeline's arrays in the learner file, beside the learner's own
NORM_PREFIX = "normalize."  # the personal normalisation statistics in the learner file


class LocalState(NamedTuple):
    """What one client keeps between rounds."""

    learner: ClientState  # what the learner keeps, arrays with leading axis 1
    pipeline: PipelineState  # what the update pipeline keeps, leading axis 1
    norm: NormStats | None = None  # its own normalisation statistics (one row) with stats: personal, else None


@dataclass(frozen=True)
class LocalUpdate:
    """One round's result as it leaves the device: no experience, only the change."""

    delta: np.ndarray  # float32 (d,): trained params minus the global params
    env_steps: int
    metrics: UpdateMetrics
    control_delta: np.ndarray | None  # float32 (d,): SCAFFOLD's c_i+ - c_i; None without a server control
    payload: bytes | None = (
        None  # what is sent instead of delta: the pipeline's encoding of it; None without a pipeline
    )
    norm: NormStats | None = None  # the statistics of what it observed (unbatched); None without normalisation


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
        """The learner state of a client that has never trained."""
        setup = self.setup
        config = setup.config.learner
        learner = init_client_state(config, setup.net, 1, setup.strategy.uses_control_variates)
        if learner.returns is not None:  # reward scaling's running return: a device steps one environment
            learner = replace(learner, returns=np.zeros((1, 1)))
        own = init_stats(config.normalize, setup.family.obs_dim, 1) if config.normalize.stats == "personal" else None
        return LocalState(learner, init_pipeline_state(setup.config.pipeline, 1, setup.net.spec.dim), own)

    def policy(
        self, version: int, params: np.ndarray, state: LocalState, since: float, norm: NormStats | None = None
    ) -> Policy:
        """Global version ``version`` as this client acts with it: its personal part included, and
        observations normalised by the version's statistics ``norm`` or, with personal statistics,
        by its own once it has observed anything."""
        acting = self.acting_params(params, state)
        card = policy_card(self.setup, acting, version, self.env_params[0], self.acting_stats(state, norm))
        return Policy(version, acting, card, since)

    @staticmethod
    def acting_stats(state: LocalState, norm: NormStats | None) -> NormStats | None:
        """What this client normalises its observations with when it acts: its own statistics
        once it has any, else the version's ``norm``."""
        own = state.norm
        if own is None or norm is None or (own.obs or own.returns).count[0] == 0:
            return norm
        return own.total()

    def train(
        self,
        state: LocalState,
        params: np.ndarray,
        round_: int,
        experience: Experience,
        server_control: np.ndarray | None = None,
        norm: NormStats | None = None,
    ) -> tuple[LocalUpdate, LocalState]:
        """Learn from ``experience`` starting at the global ``params`` ``(d,)`` for ``round_``
        (normalising from the fleet's statistics ``norm``, or its own with personal statistics);
        ``ValueError`` when ``params`` or ``server_control`` do not fit this experiment's network,
        the experiment normalises but no statistics came, or there is no experience."""
        setup = self.setup
        params = np.asarray(params, dtype=np.float32)
        start = state.norm if state.norm is not None else norm
        if setup.config.learner.normalize.active and start is None:
            raise ValueError("the experiment normalises (learner.normalize), but the task carries no statistics")
        learner = state.learner
        if learner.returns is not None:  # the experience need not go on from last round's: no running return carries
            learner = replace(learner, returns=np.zeros_like(learner.returns))
        task = make_task(
            setup.net,
            setup.family,
            self.env_params,
            None,  # no simulated environments: the experience was recorded in the device's own
            params,
            setup.config.learner.prox_mu,
            setup.rng(TRAIN_STREAM, round_, self.index),
            client_state=learner,
            server_control=server_control,
            norm=start,
        )
        result = train_from_experience(setup.config.learner, task, experience)
        control = None if result.control_delta is None else result.control_delta[0].astype(np.float32)
        delta = (result.params[0] - params).astype(np.float32)
        payload, pipeline = self._encode(delta, state.pipeline, round_)
        update = LocalUpdate(
            delta,
            int(result.env_steps[0]),
            UpdateMetrics(float(result.loss[0]), int(result.episodes[0])),
            control,
            payload,
            None if result.norm is None or not _stats_sent(setup.config) else result.norm.total(),
        )
        own = None if state.norm is None else state.norm.merge(result.norm)
        return update, LocalState(result.client_state, pipeline, own)

    def _encode(self, delta: np.ndarray, pipeline: PipelineState, round_: int) -> tuple[bytes | None, PipelineState]:
        """The pipeline's message for ``delta`` (None when the pipeline applies nothing: the delta
        travels as it is) and the pipeline state after sending it; the simulator's stream for this
        client and round, so the bytes are the simulated client's."""
        config = self.setup.config.pipeline
        if config.applies_nothing:
            return None, pipeline
        residual = None if pipeline.residual is None else pipeline.residual[0]
        rng = self.setup.rng(PIPELINE_STREAM, round_, self.index)
        message = client_message(config, delta, residual, rng, self.setup.net.spec.sizes)
        return message.payload, after_sending(pipeline, np.array([0]), [message])

    def acting_params(self, params: np.ndarray, state: LocalState) -> np.ndarray:
        """``(d,)``: what this client acts with -- the global ``params``, with its personal
        part where only some towers are federated."""
        return local_params(self.setup.config.learner, self.setup.net, params, state.learner, 1)[0]

    def save_learner(self, state_dir: Path, state: LocalState, staged: bool = False) -> None:
        """Write the learner and pipeline state durably to ``state_dir``, as one file; ``staged``:
        as the state that follows the pending update (``commit_learner`` makes it the state once
        the server has answered the update), written before the update itself, so that a device
        killed in between resubmits the update and goes on from the state that made it."""
        name = STAGED_FILE if staged else LEARNER_FILE
        disk.save_record(Path(state_dir) / name, _file_arrays(state), {"client_index": self.index})

    @staticmethod
    def commit_learner(state_dir: Path) -> None:
        """Make the staged state (if any) the learner state: its update has been answered."""
        staged = Path(state_dir) / STAGED_FILE
        if staged.exists():
            staged.replace(Path(state_dir) / LEARNER_FILE)
            disk.sync_folder(Path(state_dir))

    def restore(self, state_dir: Path, pending: bool = False) -> LocalState:
        """The learner and pipeline state saved in ``state_dir`` (with an update ``pending``, the
        state staged after it; without, a staged state is an update that was never saved, and is
        dropped); a fresh state when none was saved, or it was saved by another client index, another
        network or another pipeline (``ValueError`` when the file is unreadable)."""
        staged = Path(state_dir) / STAGED_FILE
        if pending and staged.exists():
            self.commit_learner(state_dir)
        else:
            disk.remove(staged)
        fresh = self.fresh_state()
        record = disk.load_record(Path(state_dir) / LEARNER_FILE)
        if (
            record is None
            or record[1].get("client_index") != self.index
            or not _same_layout(record[0], _file_arrays(fresh))
        ):
            return fresh
        saved = record[0]
        return fresh._replace(
            learner=from_arrays(ClientState, saved),
            pipeline=from_arrays(PipelineState, saved, PIPELINE_PREFIX),
            norm=None if fresh.norm is None else from_arrays(NormStats, saved, NORM_PREFIX),
        )


def _file_arrays(state: LocalState) -> dict[str, np.ndarray]:
    """The learner file's arrays: the learner's own, the pipeline's under ``PIPELINE_PREFIX`` and
    the personal normalisation statistics under ``NORM_PREFIX``."""
    own = {} if state.norm is None else to_arrays(state.norm, NORM_PREFIX)
    return to_arrays(state.learner) | to_arrays(state.pipeline, PIPELINE_PREFIX) | own


def _same_layout(saved: dict[str, np.ndarray], fresh: dict[str, np.ndarray]) -> bool:
    return saved.keys() == fresh.keys() and all(
        saved[k].shape == fresh[k].shape and saved[k].dtype == fresh[k].dtype for k in fresh
    )


def trainer_from_yaml(experiment_yaml: str, index: int) -> EdgeTrainer:
    """The trainer of client ``index`` in the experiment the server sent, as YAML;
    ``ConfigError`` in one line when the config is unusable here (or names code for the device
    to import) or ``index`` is not a client."""
    return EdgeTrainer(Setup(read_from_server(experiment_yaml)), index)


def _stats_sent(config) -> bool:
    """Whether the statistics of what the device observed leave it: beside its update, or inside the secure sum."""
    return config.stats_travel or config.stats_in_secure_sum
