"""Where a round's shards of clients train: one after another in this process, or in parallel on
the actors of a Ray cluster (``fedrl.sim.ray_shards``, ``backend.name: ray``).

A shard's training is a pure function of a ``ShardJob`` (its clients, their environments' and
learners' state, the fleet's statistics, the random stream's tags) and the global params, so any
worker holding the run's config computes the same result, and a shard lost with its worker can
be computed again. The driver keeps everything else: sampling, the pipeline, aggregation,
evaluation and the run directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np

from fedrl.agents import LocalResult, make_task, train_local
from fedrl.agents.memory import ClientState
from fedrl.core.normstats import NormStats
from fedrl.core.rows import take_rows
from fedrl.envs.base import take_clients
from fedrl.experiment.setup import Setup
from fedrl.experiment.streams import TRAIN_STREAM


class ShardLost(RuntimeError):
    """A shard could not be trained: its worker died more often than the backend retries."""


class ShardJob(NamedTuple):
    """What one shard's local training needs besides the global params and the run's config."""

    rows: np.ndarray  # the shard's client indices
    env_state: Any  # their environments, as ``fedrl.envs.base.take_clients`` cuts them
    client_state: ClientState  # what each of them keeps between rounds
    server_control: np.ndarray | None  # SCAFFOLD's global control variate
    norm: NormStats | None  # the fleet's normalisation statistics, or the shard's clients' own
    tags: tuple  # the shard's training stream: ``setup.rng(TRAIN_STREAM, *tags)``


def shard_job(setup: Setup, state, rows: np.ndarray, tags: tuple) -> ShardJob:
    """The job of training ``rows`` from ``state`` (a ``SimState``) with the stream ``tags``."""
    control = state.strategy_state.c if setup.strategy.uses_control_variates else None
    norm = None if state.norm is None else state.norm.of_clients(rows)
    return ShardJob(rows, take_clients(state.env_state, rows), take_rows(state.client_state, rows), control, norm, tags)


def run_shard(setup: Setup, params: np.ndarray, job: ShardJob) -> LocalResult:
    """Local training of ``job``'s clients from the global ``params``: the same wherever it runs."""
    rng = setup.rng(TRAIN_STREAM, *job.tags)
    task = make_task(
        setup.net,
        setup.family,
        setup.env_params[job.rows],
        job.env_state,
        params,
        setup.config.learner.prox_mu,
        rng,
        client_state=job.client_state,
        server_control=job.server_control,
        norm=job.norm,
    )
    return train_local(setup.config.learner, task, setup.budget)


class Shards(Protocol):
    """A backend: trains a round's shard jobs and closes when the run is done."""

    def train(self, setup: Setup, params: np.ndarray, jobs: Iterable[ShardJob]) -> Iterator[LocalResult | None]:
        """Each job's result, in order; None for a job whose worker died and that is dropped."""
        ...

    def close(self) -> None:
        """Release the workers (nothing for the in-process backend)."""
        ...


class InProcess:
    """The default backend: the shards one after another, in this process and on its threads."""

    def train(self, setup: Setup, params: np.ndarray, jobs: Iterable[ShardJob]) -> Iterator[LocalResult]:
        """Each job's result, in order, one job at a time (only one shard's copies are held)."""
        for job in jobs:
            yield run_shard(setup, params, job)

    def close(self) -> None:
        """Nothing to release."""
