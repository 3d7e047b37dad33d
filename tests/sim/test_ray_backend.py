"""The Ray backend: a real local Ray cluster whose actors train the shards, killed with SIGKILL."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import ray
import yaml

from fedrl.agents.runtime import threads
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import apply_override, parse_config
from fedrl.sim import run as runs
from fedrl.sim.clients import shards
from fedrl.sim.engine import initial_state
from fedrl.sim.ray_shards import RayShards
from fedrl.sim.rundir import ROUND_COLUMNS, RunDir
from fedrl.sim.setup import SimSetup
from fedrl.sim.shards import InProcess, ShardLost, shard_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for the module; runs join it and leave it running. Ray gives its
    node 30 s to start; on a loaded machine the first try may run out: a second one then."""
    for attempt in range(2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
            break
        except Exception:  # Ray raises a bare Exception when its node is slow to start
            ray.shutdown()
            if attempt:
                raise
    yield
    ray.shutdown()


def _config(tiny_config, *overrides):
    """``tiny_config`` on 8 clients in 4 shards, one torch thread (one CPU per actor)."""
    data = {**tiny_config, "threads": 1}
    for assignment in ("federation.n_clients=8", "federation.shard_size=2", *overrides):
        data = apply_override(data, assignment)
    return parse_config(data)


def _metrics(run_dir):
    rows = np.array(run_dir.rounds(), dtype=np.float64)
    return np.nan_to_num(np.delete(rows, ROUND_COLUMNS.index("wall_s"), axis=1))


def _kill_while_training(backend, round_, delay_s=0.5):
    """``backend.train`` of ``round_``'s jobs with actor 0 killed by SIGKILL ``delay_s`` into it;
    its result or exception, and actor 0's pid before."""
    victim = backend.pids()[0]
    outcome = {}

    def train():
        try:
            outcome["results"] = list(backend.train(round_.setup, round_.params, round_.jobs))
        except Exception as exc:  # what the caller asserts on
            outcome["error"] = exc

    worker = threading.Thread(target=train)
    worker.start()
    time.sleep(delay_s)
    os.kill(victim, signal.SIGKILL)
    worker.join()
    return outcome, victim


class SlowRound(NamedTuple):
    """Round 1 of a run whose shards take over a second each (a kill lands mid-shard): its setup,
    the initial params, the shard jobs and their results in this process."""

    setup: SimSetup
    params: np.ndarray
    jobs: list
    expected: list

    def backend(self, **settings) -> RayShards:
        """Ray actors for this run, with ``settings`` in place of its backend's."""
        return RayShards(self.setup.config.backend.model_copy(update=settings), self.setup.config)


@pytest.fixture(scope="module")
def slow_round():
    config = {
        "seed": 5,
        "threads": 1,
        "learner": {"n_envs": 4, "n_steps": 32, "hidden": [32, 32]},
        "federation": {"n_clients": 8, "shard_size": 2, "local_steps": 8192},
    }
    setup = SimSetup(parse_config(config))
    state = initial_state(setup)
    groups = shards(np.arange(8), 2)
    jobs = [shard_job(setup, state, rows, (1, i)) for i, rows in enumerate(groups)]
    with threads(1):
        expected = list(InProcess().train(setup, state.params, jobs))
    return SlowRound(setup, state.params, jobs, expected)


def _assert_same_results(got, expected):
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.params, b.params)
        np.testing.assert_array_equal(a.loss, b.loss)


# first: the other tests keep this process joined to their cluster, which a run then uses whatever its address
def test_an_address_where_nothing_answers_is_refused_before_anything_is_written(tmp_path, tiny_config):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _config(tiny_config, "backend.name=ray", f'backend.address="127.0.0.1:{port}"')
    with pytest.raises(ConfigError, match="backend.address = '127.0.0.1:.*nothing answers there"):
        runs.start(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_fedrl_run_with_backend_ray_starts_its_own_cluster_and_matches_fedrl_run(tmp_path, config_file):
    # Prepare: the same config through the command line, in process and on a cluster the run starts itself
    fedrl = [sys.executable, "-m", "fedrl.cli", "run", str(config_file), "--quiet", "--no-tensorboard"]
    common = ["--set", "threads=1", "--set", "federation.n_clients=4", "--set", "federation.shard_size=2"]
    subprocess.run([*fedrl, *common, "--out", str(tmp_path / "local")], check=True, capture_output=True)
    # Act
    done = subprocess.run(
        [*fedrl, *common, "--backend", "ray", "--out", str(tmp_path / "ray")], capture_output=True, text=True
    )
    # Assert: it ran to its end, wrote the same metrics, and left no cluster behind it
    assert done.returncode == 0, done.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "ray" / "config.yaml").read_text())["backend"]["name"] == "ray"
    local, remote = (RunDir(tmp_path / name) for name in ("local", "ray"))
    np.testing.assert_array_equal(_metrics(local), _metrics(remote))
    deadline = time.monotonic() + 15
    while _raylets() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _raylets()


def _raylets() -> list[str]:
    """Ray node processes running on this machine (/proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if "raylet" in text.split(" ")[0]:
            found.append(text)
    return found


def test_a_ray_run_gives_the_in_process_numbers_bit_for_bit(cluster, tmp_path, tiny_config):
    # Prepare: the same config, in this process and on 2 actors
    config = _config(tiny_config)
    local = runs.start(config, tmp_path / "local")
    list(local.rounds())
    remote = runs.start(parse_config(apply_override(config.model_dump(), "backend.name=ray")), tmp_path / "ray")
    # Act
    last = list(remote.rounds())[-1][1]
    # Assert: every metric and the final model are identical; the actors are released at the end
    np.testing.assert_array_equal(_metrics(local.dir), _metrics(remote.dir))
    np.testing.assert_array_equal(np.array(local.dir.client_returns()), np.array(remote.dir.client_returns()))
    final = local.dir.load_checkpoint(local.setup, local.dir.latest_checkpoint()).params
    np.testing.assert_array_equal(final, last.params)
    assert "shards" not in remote.setup.__dict__
    assert ray.is_initialized()  # the test's cluster, which the run joined, still runs


def test_an_actor_killed_mid_round_has_its_shard_retried_with_the_same_result(cluster, slow_round):
    backend = slow_round.backend(name="ray")
    try:
        # Act: SIGKILL an actor while it trains
        outcome, victim = _kill_while_training(backend, slow_round)
        # Assert: Ray restarted it, its shard was trained again, and every result is the in-process one
        assert "error" not in outcome
        assert victim not in backend.pids()
        _assert_same_results(outcome["results"], slow_round.expected)
    finally:
        backend.close()


def test_with_on_failure_drop_a_killed_actors_shard_is_lost_and_the_rest_kept(cluster, slow_round):
    backend = slow_round.backend(name="ray", on_failure="drop")
    try:
        outcome, victim = _kill_while_training(backend, slow_round)
        results = outcome["results"]
        lost = [i for i, r in enumerate(results) if r is None]
        assert len(lost) == 1  # the shard actor 0 was training
        kept = [i for i in range(len(results)) if i not in lost]
        _assert_same_results([results[i] for i in kept], [slow_round.expected[i] for i in kept])
        # a new actor took its place and trains the next round's shards
        assert victim not in backend.pids()
        again = list(backend.train(slow_round.setup, slow_round.params, slow_round.jobs))
        _assert_same_results(again, slow_round.expected)
    finally:
        backend.close()


def test_when_retries_run_out_the_run_stops_naming_the_setting(cluster, slow_round):
    backend = slow_round.backend(name="ray", retries=0)
    try:
        outcome, _ = _kill_while_training(backend, slow_round)
        assert isinstance(outcome["error"], ShardLost)
        assert "its Ray actor died 1 times (backend.retries = 0)" in str(outcome["error"])
    finally:
        backend.close()


def test_a_run_whose_shard_is_lost_counts_its_clients_as_dropped_and_goes_on(cluster, tmp_path, tiny_config):
    # Prepare: a dropping run; round 1 as usual
    config = _config(tiny_config, "federation.local_steps=8192", "backend.name=ray", "backend.on_failure=drop")
    current = runs.start(config, tmp_path / "run")
    rounds = current.rounds(tensorboard=False)
    first, _ = next(rounds)
    victim = current.setup.shards.pids()[0]
    # Act: SIGKILL an actor half a second into round 2
    timer = threading.Timer(0.5, os.kill, (victim, signal.SIGKILL))
    timer.start()
    second, _ = next(rounds)
    timer.join()
    third, _ = next(rounds)
    # Assert: round 2 lost one shard of 2 clients, as dropped; round 3 has every client again
    assert (first.stats.n_updates, first.stats.n_dropped) == (8, 0)
    assert (second.stats.n_updates, second.stats.n_dropped) == (6, 2)
    assert (third.stats.n_updates, third.stats.n_dropped) == (8, 0)
    assert np.isfinite(third.global_mean_return)


def test_more_actors_than_the_cluster_holds_are_refused_by_name(cluster, tiny_config):
    config = _config(tiny_config, "backend.name=ray", "backend.workers=3")
    with pytest.raises(ConfigError, match=r"backend.workers = 3: 3 actor\(s\) of 1 CPUs each .* the Ray cluster has 2"):
        RayShards(config.backend, config)


def test_a_users_gymnasium_env_trains_on_ray_with_the_in_process_numbers(cluster, tmp_path, tiny_config):
    # Prepare: the user's setter in a folder of theirs, on no import path, named by the config
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "my_ray_setters.py").write_text("def set_pole(env, row):\n    env.length = row['length']\n")
    gym = {
        "id": "CartPole-v1",
        "setter": "my_ray_setters:set_pole",
        "setter_dir": str(folder),
        "params": {"length": {"standard": 0.5, "low": 0.1, "high": 0.9}},
        "time_limit": 100,
    }
    config = _config({**tiny_config, "env": {"family": "gym", "heterogeneity": 1.0, "gym": gym}}, "federation.rounds=2")
    local = runs.start(config, tmp_path / "local")
    list(local.rounds())
    # Act: the actors import it from there, and receive the adapter's live environments with each shard
    remote = runs.start(parse_config(apply_override(config.model_dump(), "backend.name=ray")), tmp_path / "ray")
    list(remote.rounds())
    # Assert
    np.testing.assert_array_equal(_metrics(local.dir), _metrics(remote.dir))
