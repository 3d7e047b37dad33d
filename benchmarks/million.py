"""A million devices through 100 regions: memory and time per round of a sampled simulation.

CartPole clients, 2,000 sampled a round (each with 16 envs x 64 steps, 1,024 steps a round, PPO
with 4 epochs of 4 minibatches, shards of 500), aggregated through 100 regions
(``federation.regions``); a sampled evaluation of 200 clients a round (2 episodes each, with its 95 %
interval). The same per-round work at 10,000, 100,000 and 1,000,000 clients shows what grows
with the fleet (the state every client keeps: its environments between rounds) and what does not
(a round's work). Each fleet runs in its own process so that its peak memory is its own; the
in-process backend, 2 torch threads.

    python benchmarks/million.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _report import machine, markdown_table, save_figure, write_section
from ray_backend import cartpole

COMMAND = "python benchmarks/million.py"
FLEETS = (10_000, 100_000, 1_000_000)
PER_ROUND = 2_000
REGIONS = 100
ROUNDS = 3  # after a warm-up round


def config(n_clients: int) -> dict:
    """The benchmark's experiment for a fleet of ``n_clients``: the Ray benchmark's CartPole fleet
    (benchmarks/ray_backend.py), through regions, with a sampled evaluation."""
    fleet = cartpole(n_clients, PER_ROUND)
    fleet["federation"].update(regions=REGIONS, rounds=ROUNDS + 1)
    return {**fleet, "eval": {"clients": 200, "episodes": 2, "confirm_episodes": 0}}


def measure(n_clients: int) -> dict:
    """In this process: set-up, then a warm-up round and ``ROUNDS`` timed ones (training, aggregation through
    the regions, the sampled evaluation); peak resident memory."""
    from fedrl.agents.runtime import threads, tune_allocator
    from fedrl.experiment.loading import parse_config
    from fedrl.sim.engine import initial_state, run_rounds
    from fedrl.sim.setup import SimSetup

    tune_allocator()
    start = time.perf_counter()
    setup = SimSetup(parse_config(config(n_clients)))
    state = initial_state(setup)
    setup_s = time.perf_counter() - start
    with threads(setup.config.threads):
        rounds = run_rounds(setup, state)
        next(rounds)
        start = time.perf_counter()
        results = [next(rounds)[0] for _ in range(ROUNDS)]
        per_round = (time.perf_counter() - start) / ROUNDS
    last = results[-1]
    low, high = last.mean_return_interval
    return {
        "clients": n_clients,
        "setup_s": setup_s,
        "round_s": per_round,
        "updates": last.stats.n_updates,
        "mean": last.global_mean_return,
        "low": low,
        "high": high,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def plot(rows: list[dict]) -> str:
    """Peak memory and seconds per round against the fleet's size."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    sizes = [r["clients"] for r in rows]
    left.plot(sizes, [r["peak_mb"] for r in rows], "o-")
    left.set(xscale="log", xlabel="clients in the fleet", ylabel="peak memory (MB)")
    right.plot(sizes, [r["round_s"] for r in rows], "o-")
    right.set(xscale="log", xlabel="clients in the fleet", ylabel="seconds per round", ylim=(0, None))
    fig.suptitle(f"{PER_ROUND:,} clients a round through {REGIONS} regions")
    return save_figure(fig, "million.png", "a million devices")


def main() -> None:
    rows = []
    for n in FLEETS:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n)], check=True, capture_output=True, text=True
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    table = markdown_table(
        ["clients", "set-up (s)", "seconds per round", "updates a round", "mean return [95 % interval]", "peak MB"],
        [
            [
                f"{r['clients']:,}",
                f"{r['setup_s']:.1f}",
                f"{r['round_s']:.2f}",
                f"{r['updates']:,}",
                f"{r['mean']:.1f} [{r['low']:.1f}, {r['high']:.1f}]",
                f"{r['peak_mb']:,.0f}",
            ]
            for r in rows
        ],
    )
    print(table)
    body = (
        f"## A million devices through 100 regions\n\n`{COMMAND}` ({machine()})\n\n"
        f"CartPole clients at heterogeneity 1 (the default), {PER_ROUND:,} sampled a round, each training 1,024 env "
        f"steps (16 envs x 64 steps, PPO, 4 epochs of 4 minibatches, shards of 500), their updates reduced in "
        f"{REGIONS} regions (`federation.regions`, [hierarchy](hierarchy.md)) and the regions' averaged at the root; "
        f"every round evaluates a fresh sample of 200 clients (2 episodes each; the fleet's mean lies in the "
        f"interval). Seconds per round: the mean of {ROUNDS} rounds after a warm-up round, evaluation included. "
        "Set-up: the fleet's physics, the initial policy and every client's first episodes. Each fleet in its own "
        "process (peak resident memory is its own); in-process backend, 2 torch threads.\n\n"
        f"{table}\n\n{plot(rows)}\n"
    )
    write_section("million", body)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure(int(sys.argv[2]))))
    else:
        main()
