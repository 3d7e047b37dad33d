"""The Ray backend (``backend.name: ray``): a round's shards train on Ray actors in parallel.

Each actor holds the run's setup, built from its config, and trains whatever shard it is handed
(``fedrl.sim.shards.run_shard``) on the run's torch thread count, so the results are those of the
in-process backend bit for bit. The driver hands each free actor the next shard, keeps their
results in shard order and does everything else. An actor that dies is restarted by Ray and
its shard retried on it (``on_failure: retry``, up to ``retries`` times), or it is replaced and its
shard's clients count as dropped for the round (``on_failure: drop``). Ray is an extra: ``pip install 'fedrl[ray]'``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterable, Iterator

import numpy as np

from fedrl.agents import LocalResult
from fedrl.agents.runtime import threads, tune_allocator
from fedrl.experiment.config import BackendConfig, ConfigError, ExperimentConfig
from fedrl.experiment.setup import Setup
from fedrl.sim.shards import ShardJob, ShardLost, run_shard

REPLACE_TIMEOUT_S = 120.0  # how long a dead actor's replacement may take to be placed and start


def _import_ray():
    """Ray, imported on first use (0.3 s that an in-process run does not pay), or ``ConfigError``
    naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError("bad config: backend.name = 'ray' needs Ray, an extra: pip install 'fedrl[ray]'") from None
    return ray


class ShardWorker:
    """One actor: the run's setup, and the shards it trains on the run's thread count."""

    def __init__(self, experiment: ExperimentConfig, cwd: str, path: list[str]):
        # the driver's folder and import path, where this machine has them: a user's env, network or loss
        # named "module:function" imports here as it did there
        if os.path.isdir(cwd):
            os.chdir(cwd)
        sys.path[:0] = [p for p in path if p not in sys.path and os.path.isdir(p)]
        tune_allocator()
        self.setup = Setup(experiment)
        # made now, not on the first shard: the user's modules they import (an env's setter, a network)
        # must be loaded before a shard holding their objects (the adapter's environments) can be unpickled
        self.family, self.net = self.setup.family, self.setup.net

    def train(self, params: np.ndarray, job: ShardJob) -> LocalResult:
        """``run_shard`` on the run's torch threads."""
        with threads(actor_threads(self.setup.config)):
            return run_shard(self.setup, params, job)

    def pid(self) -> int:
        """This actor's process id (what a test kills)."""
        return os.getpid()


def _connect(ray, config: BackendConfig) -> bool:
    """Join or start the cluster (a local one has this machine's CPUs); whether this process
    started, and so should stop, it. A process already joined to one (``ray.init`` by the caller)
    keeps it."""
    if ray.is_initialized():
        return False
    _reachable(config.address)
    try:
        ray.init(address=config.address, include_dashboard=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        problem = f"cannot join the Ray cluster: {exc}"
        raise ConfigError(f"bad config: backend.address = {config.address!r}: {problem}") from None
    return True


def _reachable(address: str | None) -> None:
    """``ConfigError`` at once when a HOST:PORT address answers no connection (Ray itself would
    keep retrying for minutes)."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        problem = f"nothing answers there ({exc}); give auto or the HOST:PORT that `ray start --head` printed"
        raise ConfigError(f"bad config: backend.address = {address!r}: {problem}") from None


def actor_threads(experiment: ExperimentConfig) -> int:
    """The torch threads, and CPUs, of one actor: the run's fixed count (1 where it is not fixed)."""
    return experiment.threads or 1


def _worker_count(config: BackendConfig, cluster_cpus: int, cpus: int) -> int:
    """``workers`` actors of ``cpus`` CPUs each, or as many as the cluster holds; ``ConfigError``
    when they do not fit (an actor that cannot be placed would stall its shards for ever)."""
    fits = cluster_cpus // cpus
    if config.workers is None and fits >= 1:
        return fits
    if config.workers is not None and config.workers <= fits:
        return config.workers
    wanted = config.workers or 1
    raise ConfigError(
        f"bad config: backend.workers = {config.workers}: {wanted} actor(s) of {cpus} CPUs each (one per torch thread, "
        f"threads = {cpus}) need {wanted * cpus} CPUs, and the Ray cluster has {cluster_cpus}; set threads: 1 "
        "to run one actor per CPU (the numbers then match an in-process run with threads: 1)"
    )


class RayShards:
    """Shards trained on ``workers`` actors of a Ray cluster, in shard order however they finish."""

    def __init__(self, config: BackendConfig, experiment: ExperimentConfig):
        ray = self.ray = _import_ray()
        self.config, self.actors = config, []
        self._all_lost = 0  # rounds in a row that lost every shard
        self._owns_cluster = _connect(ray, config)
        cpus = actor_threads(experiment)
        try:
            n = _worker_count(config, int(ray.cluster_resources().get("CPU", 0)), cpus)
        except ConfigError:
            self.close()
            raise
        # retry: Ray restarts a dead actor and runs its shard again there; drop: a dead actor is
        # replaced by a new one, which takes the next shard once it is up
        self._cpus = cpus
        retry = config.on_failure == "retry"
        options = {"max_restarts": -1, "max_task_retries": config.retries} if retry else {}
        self._worker = ray.remote(num_cpus=cpus, **options)(ShardWorker)
        self._args = (experiment, os.getcwd(), list(sys.path))
        self.actors = [self._worker.remote(*self._args) for _ in range(n)]
        try:
            self.pids()  # every actor up, its setup built: a module it cannot import is said now, once
        except ray.exceptions.RayActorError as exc:
            self.close()
            raise ConfigError(f"bad config: backend.name = 'ray': the Ray actors could not start: {exc}") from None

    def train(self, setup: Setup, params: np.ndarray, jobs: Iterable[ShardJob]) -> Iterator[LocalResult | None]:
        """Each job's result in order; None for one whose actor died, with ``on_failure: drop``
        (``ShardLost`` once more than ``retries`` rounds in a row lost every shard: actors that die the
        same way on every shard would otherwise leave a run that never trains)."""
        jobs = list(jobs)
        results = self._run(params, jobs)
        everything = bool(jobs) and all(r is None for r in results)
        self._all_lost = self._all_lost + 1 if everything else 0
        if self._all_lost > self.config.retries:
            raise ShardLost(
                f"every shard was lost with its Ray actor in {self._all_lost} rounds in a row (backend.retries = "
                f"{self.config.retries})"
            )
        yield from results

    def _run(self, params: np.ndarray, jobs: list[ShardJob]) -> list[LocalResult | None]:
        """The jobs on the actors, each free actor taking the next; results in job order."""
        ray = self.ray
        shared = ray.put(np.asarray(params))
        results: list[LocalResult | None] = [None] * len(jobs)
        running: dict = {}  # future -> (job index, actor index)
        idle, waiting = list(range(len(self.actors))), list(range(len(jobs)))
        while waiting or running:
            while idle and waiting:
                i, k = waiting.pop(0), idle.pop(0)
                running[self.actors[k].train.remote(shared, jobs[i])] = (i, k)
            done, _ = ray.wait(list(running), num_returns=1)
            i, k = running.pop(done[0])
            results[i] = self._result(done[0], i, k)
            idle.append(k)
        return results

    def _result(self, future, shard: int, actor: int) -> LocalResult | None:
        """The shard's result; None if its actor died and the run drops it (the actor is replaced);
        the user's own error as raised in the actor."""
        errors = self.ray.exceptions
        try:
            return self.ray.get(future)
        except errors.RayTaskError as exc:  # raised by the shard's code, not a lost worker
            raise exc.cause from None
        except (errors.RayActorError, errors.ActorUnavailableError) as exc:
            if self.config.on_failure == "drop":
                self._replace(actor)
                return None
            raise ShardLost(
                f"shard {shard}: its Ray actor died {self.config.retries + 1} times (backend.retries = "
                f"{self.config.retries}); the last: {exc}"
            ) from None

    def _replace(self, actor: int) -> None:
        """A new actor in place of a dead one, up before it takes a shard (``ShardLost`` if it cannot start,
        rather than dropping every later shard of the run)."""
        self.ray.kill(self.actors[actor])  # it may be alive but unreachable, holding its CPUs
        self.actors[actor] = self._worker.remote(*self._args)
        errors = self.ray.exceptions
        try:
            self.ray.get(self.actors[actor].pid.remote(), timeout=REPLACE_TIMEOUT_S)
        except (errors.RayActorError, errors.ActorUnavailableError) as exc:
            raise ShardLost(f"a Ray actor died and its replacement could not start: {exc}") from None
        except errors.GetTimeoutError:
            free = self.ray.available_resources().get("CPU", 0)
            raise ShardLost(
                f"a Ray actor died and its replacement was not placed within {REPLACE_TIMEOUT_S:.0f} s: it needs "
                f"{self._cpus} CPUs and the cluster has {free:g} free"
            ) from None

    def pids(self) -> list[int]:
        """The actors' process ids."""
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def close(self) -> None:
        """Stop the actors, and the cluster if this run started it."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._owns_cluster:
            self.ray.shutdown()
