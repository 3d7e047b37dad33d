"""Bandwidth: uplink bytes and rounds to the target return with compressed updates -- dense
float32, top-1% with error feedback, 8-bit stochastic quantization, both, 4-bit, and an unbiased
random 10% quantized to 4 bits -- on CartPole and air-quality, with 10 clients and with 100
(10 sampled a round).

Bytes are the measured length of every encoded update (``fedrl.core.compress.encode``), summed
over the run up to the round that reaches the target. Every run is an in-process simulation with
one torch thread, two runs at a time.

    python benchmarks/bandwidth.py
"""

from __future__ import annotations

import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _report import markdown_table, run_parallel, save_figure, write_section
from algorithms import config_with, where

COMMAND = "python benchmarks/bandwidth.py"
SEEDS = (0, 1)
MAX_ROUNDS = 50
CARTPOLE = {
    "env": {"family": "cartpole", "heterogeneity": 1.0},
    "learner": {"name": "ppo", "lr": 0.0025, "n_envs": 8, "n_steps": 64},
    "federation": {"rounds": MAX_ROUNDS, "local_steps": 1024},
    "eval": {"episodes": 4, "heldout_clients": 0},
}
AIRQUALITY = {
    "env": {"family": "airquality", "heterogeneity": 0.5},
    "learner": {"name": "ppo", "lr": 0.003, "n_envs": 8, "n_steps": 128, "ent_coef": 0.01},
    "federation": {"rounds": MAX_ROUNDS, "local_steps": 1024, "target_return": 3.0},
    "eval": {"episodes": 4, "greedy": False, "heldout_clients": 0},
}
ENVS = {"cartpole": CARTPOLE, "airquality": AIRQUALITY}
FLEETS = {
    "10 clients": {"n_clients": 10, "fraction": 1.0},
    "100 clients, 10 a round": {"n_clients": 100, "fraction": 0.1},
}
METHODS = {
    "dense float32": {},
    "top-1% + EF": {"sparsify": "topk", "ratio": 0.01, "error_feedback": True},
    "8-bit": {"bits": 8},
    "top-1% + EF + 8-bit": {"sparsify": "topk", "ratio": 0.01, "bits": 8, "error_feedback": True},
    "4-bit": {"bits": 4},
    "random-10% + 4-bit": {"sparsify": "randomk", "ratio": 0.1, "bits": 4},
}
TARGET_BYTES, TARGET_ROUNDS = 20.0, 1.5


def simulate(job: dict) -> dict:
    """One simulation to its target or round limit: its figures and a per-round curve of
    (round, cumulative uplink bytes, epsilon spent, mean return, worst-client return)."""
    import time

    import torch

    torch.set_num_threads(1)
    from fedrl.experiment.loading import parse_config
    from fedrl.sim.engine import initial_state, is_solved, run_rounds
    from fedrl.sim.setup import SimSetup

    setup = SimSetup(parse_config(job["config"]))
    state, curve, uplink, solved = initial_state(setup), [], 0, False
    start = time.perf_counter()
    for result, _state in run_rounds(setup, state):
        uplink += result.stats.traffic.uplink
        solved = solved or is_solved(setup, result)
        curve.append((result.round, uplink, result.epsilon, result.global_mean_return, result.worst_client_return))
    last = curve[-1]
    return {
        **job["tags"],
        "solved": solved,
        "rounds": last[0],
        "uplink": last[1],
        "epsilon": last[2],
        "mean": last[3],
        "worst": last[4],
        "ratio": result.stats.traffic.compression_ratio,
        "wall_s": time.perf_counter() - start,
        "curve": curve,
    }


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def summarize(results: list[dict], env: str, fleet: str) -> tuple[list[list], str]:
    """Table rows for one env and fleet, and the verdict on the 20x-at-1.5x-rounds target."""
    dense = [
        r for r in results if r["env"] == env and r["fleet"] == fleet and r["method"] == "dense float32" and r["solved"]
    ]
    dense_bytes, dense_rounds = _mean([r["uplink"] for r in dense]), _mean([r["rounds"] for r in dense])
    rows, best = [], None
    for method in METHODS:
        rs = [r for r in results if r["env"] == env and r["fleet"] == fleet and r["method"] == method]
        solved = [r for r in rs if r["solved"]]
        bytes_, rounds = _mean([r["uplink"] for r in solved]), _mean([r["rounds"] for r in solved])
        fewer, more = dense_bytes / bytes_, rounds / dense_rounds
        if solved and method != "dense float32" and more <= TARGET_ROUNDS and (best is None or fewer > best[1]):
            best = (method, fewer, more)
        rows.append(
            [
                method,
                f"{len(solved)}/{len(rs)}",
                f"{_mean([r['ratio'] for r in rs]):.1f}x",
                f"{bytes_:,.0f}" if solved else f"not reached ({_mean([r['uplink'] for r in rs]):,.0f} sent)",
                f"{fewer:.1f}x" if solved else "-",
                f"{rounds:.1f} ({more:.2f}x)" if solved else f"> {MAX_ROUNDS}",
                f"{_mean([r['mean'] for r in rs]):.1f}",
                f"{_mean([r['worst'] for r in rs]):.1f}",
            ]
        )
    if not dense:
        return rows, "dense float32 did not reach the target: nothing to compare against"
    if best is None:
        return rows, "no compressed method reached the target within 1.5x dense's rounds"
    verdict = (
        "met" if best[1] >= TARGET_BYTES else f"missed: {best[1]:.1f}x, {TARGET_BYTES / best[1]:.1f}x short of 20x"
    )
    return (
        rows,
        f"best within {TARGET_ROUNDS}x dense's rounds: {best[0]}, {best[1]:.1f}x fewer uplink bytes at {best[2]:.2f}x "
        f"the rounds -- target {verdict}",
    )


HEADER = [
    "method",
    "solved",
    "compression ratio",
    "uplink bytes to target",
    "fewer bytes than dense",
    "rounds to target (vs dense)",
    "final mean return",
    "final worst client",
]


def plot_curves(results: list[dict]) -> str:
    """Mean return against cumulative uplink bytes (log scale), seed 0, one panel per env and fleet."""
    fig, axes = plt.subplots(len(ENVS), len(FLEETS), figsize=(11, 7), squeeze=False)
    for (i, env), (j, fleet) in ((e, f) for e in enumerate(ENVS) for f in enumerate(FLEETS)):
        ax = axes[i][j]
        for k, method in enumerate(METHODS):
            for r in (r for r in results if (r["env"], r["fleet"], r["method"], r["seed"]) == (env, fleet, method, 0)):
                _, uplink, _, mean, _ = zip(*r["curve"])
                ax.plot(uplink, mean, color=f"C{k}", label=method)
        ax.axhline(475 if env == "cartpole" else 3.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_title(f"{env}, {fleet}", fontsize=9)
        ax.set_xlabel("cumulative uplink bytes (all clients)")
        ax.set_ylabel("global mean return")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, "bandwidth.png", "return against uplink bytes")


def main() -> None:
    jobs = []
    for env, base in ENVS.items():
        for fleet, federation in FLEETS.items():
            for method, compression in METHODS.items():
                for seed in SEEDS:
                    cfg = config_with(base, federation=federation, pipeline={"compression": compression})
                    cfg["seed"] = seed
                    jobs.append({"config": cfg, "tags": {"env": env, "fleet": fleet, "method": method, "seed": seed}})
    results = run_parallel(simulate, jobs)
    parts = [
        f"## Bandwidth: compressed updates\n\n`{COMMAND}` ({where()})",
        f"PPO + FedAvg, 1,024 env steps per client per round, at most {MAX_ROUNDS} rounds, seeds {SEEDS} (means over "
        "the seeds that reached the target). CartPole: heterogeneity 1, target 475. Air-quality: heterogeneity 0.5, "
        "target 3.0 (sampled actions). Uplink bytes are measured: the length of every encoded update, 24-byte "
        "header included, summed over all clients up to the round that reaches the target. Top-k keeps 1% of each "
        "tensor (uint16 indices + values); 8-bit and 4-bit use one scale per update; random-10% sends the seed of its "
        "coordinates instead of their indices, and scales the kept values by 10 (unbiased, no error feedback). "
        "Target: at least "
        f"{TARGET_BYTES:.0f}x fewer uplink bytes to target with at most {TARGET_ROUNDS}x the rounds.",
    ]
    for env in ENVS:
        for fleet in FLEETS:
            rows, verdict = summarize(results, env, fleet)
            print(f"{env}, {fleet}: {verdict}")
            parts.append(f"### {env}, {fleet}\n\n" + markdown_table(HEADER, rows) + f"\n\n**{verdict}**")
    parts.append(plot_curves(results))
    write_section("bandwidth", "\n\n".join(parts))


if __name__ == "__main__":
    main()
