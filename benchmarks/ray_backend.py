"""The Ray backend against the in-process one: training throughput on this machine.

A local Ray cluster of 2 CPUs, 2 actors of one torch thread each, against the in-process backend
with one thread (the same numbers, bit for bit) and with two (the default, which a seed ties to
other numbers). Every setting trains the same clients with the same config; rounds are timed after
a warm-up round, evaluation excluded (it runs on the driver either way).

- CartPole (the vectorised family), 100 / 1,000 / 10,000 clients, PPO with 16 envs x 64 steps per
  client per round, 4 epochs of 4 minibatches; at 10,000 clients 1,000 a round. Four shards a round.
- Gymnasium's CartPole-v1 through the adapter (a user's env: Python steps one at a time), 8
  clients, 8 envs x 256 steps each per round, a shard of 2 clients per job.

The start-up of the Ray cluster and its actors is its own line.

    python benchmarks/ray_backend.py          # needs the ray extra (make setup installs it)
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _report import ROOT, machine, markdown_table, save_figure, write_section

from fedrl.agents.runtime import threads, tune_allocator
from fedrl.experiment.loading import parse_config
from fedrl.sim.engine import initial_state, run_rounds
from fedrl.sim.setup import SimSetup

COMMAND = "python benchmarks/ray_backend.py"
TIMED_ROUNDS = 3
BACKENDS = {  # label -> (backend, torch threads)
    "in-process, 2 threads (default)": ("inprocess", 2),
    "in-process, 1 thread": ("inprocess", 1),
    "Ray, 2 actors x 1 thread": ("ray", 1),
}


def cartpole(n_clients: int, most: int = 1000) -> dict:
    """The throughput benchmark's PPO on ``n_clients`` CartPoles, at most ``most`` trained a round,
    in four shards."""
    per_round = min(n_clients, most)
    return {
        "learner": {"name": "ppo", "n_envs": 16, "n_steps": 64, "epochs": 4, "minibatches": 4},
        "federation": {
            "n_clients": n_clients,
            "fraction": per_round / n_clients,
            "local_steps": 1024,
            "shard_size": per_round // 4,
            "stop_at_target": False,
        },
    }


GYM = {
    "env": {
        "family": "gym",
        "heterogeneity": 1.0,
        "gym": {
            "id": "CartPole-v1",
            "setter": "gym_setters:set_cartpole",
            "setter_dir": str(ROOT / "examples"),
            "params": {"length": {"standard": 0.5, "low": 0.1, "high": 0.9}},
        },
    },
    "learner": {"name": "ppo", "n_envs": 8, "n_steps": 256, "epochs": 4, "minibatches": 4},
    "federation": {"n_clients": 8, "local_steps": 2048, "shard_size": 2, "stop_at_target": False},
}
SETTINGS = {
    "CartPole, 100 clients": cartpole(100),
    "CartPole, 1,000 clients": cartpole(1000),
    "CartPole, 10,000 clients (1,000 a round)": cartpole(10000),
    "Gymnasium CartPole-v1 via the adapter, 8 clients": GYM,
}


def rate(config: dict, backend: str, n_threads: int) -> tuple[float, np.ndarray]:
    """Env steps/s of ``TIMED_ROUNDS`` rounds after a warm-up round, and the final params."""
    full = {**config, "threads": n_threads, "backend": {"name": backend}, "eval": {"every": 10**6}}
    full["federation"] = {**config["federation"], "rounds": 10**6}
    setup = SimSetup(parse_config(full))
    try:
        with threads(n_threads):
            rounds = run_rounds(setup, initial_state(setup))
            _, state = next(rounds)  # warm-up: actors started, allocator and caches warm
            start, first = time.perf_counter(), state.env_steps
            for _ in range(TIMED_ROUNDS):
                _, state = next(rounds)
            return (state.env_steps - first) / (time.perf_counter() - start), state.params
    finally:
        setup.close()


def startup_s() -> float:
    """Seconds from nothing to 2 actors ready to train: the local cluster and the actors' imports."""
    setup = SimSetup(parse_config({**cartpole(100), "threads": 1, "backend": {"name": "ray"}}))
    start = time.perf_counter()
    setup.start_backend().pids()
    elapsed = time.perf_counter() - start
    setup.close()
    return elapsed


def plot(results: dict[str, dict[str, float]]) -> str:
    """Grouped bars: env steps/s of each backend in each setting, relative to in-process on 2 threads."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(BACKENDS)
    for j, label in enumerate(BACKENDS):
        ratios = [r[label] / r[next(iter(BACKENDS))] for r in results.values()]
        ax.bar(np.arange(len(results)) + j * width, ratios, width, label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(np.arange(len(results)) + width, [s.replace(" (", "\n(").replace(" via", "\nvia") for s in results])
    ax.set_ylabel("env steps/s vs in-process, 2 threads")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    return save_figure(fig, "ray_backend.png", "Ray backend against in-process")


def main() -> None:
    tune_allocator()
    results: dict[str, dict[str, float]] = {}
    identical = []
    for name, config in SETTINGS.items():
        results[name], params = {}, {}
        for label, (backend, n_threads) in BACKENDS.items():
            results[name][label], params[label] = rate(config, backend, n_threads)
            print(f"{name} / {label}: {results[name][label]:,.0f} env steps/s", flush=True)
        identical.append(np.array_equal(params["in-process, 1 thread"], params["Ray, 2 actors x 1 thread"]))
    ray_start = startup_s()
    rows = []
    for (name, r), same in zip(results.items(), identical):
        base, one, on_ray = (r[label] for label in BACKENDS)
        rows.append(
            [
                name,
                f"{base:,.0f}",
                f"{one:,.0f}",
                f"{on_ray:,.0f}",
                f"{on_ray / base:.2f}x",
                f"{on_ray / one:.2f}x",
                "yes" if same else "NO",
            ]
        )
    header = [
        "setting",
        "in-process, 2 threads",
        "in-process, 1 thread",
        "Ray, 2 x 1 thread",
        "Ray vs 2 threads",
        "Ray vs 1 thread",
        "Ray's model = 1 thread's",
    ]
    table = markdown_table(header, rows)
    print(table)
    print(f"Ray start-up: {ray_start:.1f} s")
    body = (
        f"## Ray backend: shards on actors\n\n`{COMMAND}` ({machine()})\n\n"
        "Env steps/s with learning (rollouts, PPO epochs, the update pipeline, aggregation; evaluation excluded) "
        f"over {TIMED_ROUNDS} rounds after a warm-up round, on a local Ray cluster of this machine's 2 CPUs. "
        "The Ray backend's actors use one torch thread each, so its numbers are those of the in-process backend "
        "with one thread, bit for bit (last column: the final models compared); the in-process default, 2 "
        "threads, gives other numbers for the same seed. CartPole: PPO with 16 envs x 64 steps per client per "
        "round, 4 epochs of 4 minibatches, four shards a round. Gymnasium: CartPole-v1 through the adapter, "
        "8 clients, 8 envs x 256 steps each per round, shards of 2 clients.\n\n"
        f"{table}\n\nStart-up of the local cluster and its 2 actors (each imports torch and builds the run's "
        f"setup), before the first round: **{ray_start:.1f} s**.\n\n{plot(results)}\n"
    )
    write_section("ray-backend", body)


if __name__ == "__main__":
    main()
