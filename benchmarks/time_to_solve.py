"""Time to solve: 10 heterogeneous CartPoles (heterogeneity 1.0) learn one policy.

Runs ``fedrl run examples/cartpole.yaml`` as a separate process per seed and times it from
launch to exit (start-up, every round's evaluation, held-out evaluation and plots included).
The run stops when the global policy's mean greedy return over all 10 clients' environments
reaches 475 and a larger evaluation (20 fresh episodes per client) confirms it. The reference,
in the same script: single-agent Stable-Baselines3 PPO on standard CartPole-v1
(benchmarks/sb3_reference.py), also timed as a process.

    python benchmarks/time_to_solve.py            # needs the bench extra: pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _report import IMG, ROOT, machine, markdown_table, write_section

COMMAND = "python benchmarks/time_to_solve.py"


def run_fedrl(seed: int, out: Path) -> dict:
    """One timed ``fedrl run`` of the CartPole example; returns its summary and curve."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fedrl.cli",
            "run",
            str(ROOT / "examples/cartpole.yaml"),
            "--out",
            str(out),
            "--quiet",
            "--set",
            f"seed={seed}",
        ],
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    with (out / "metrics.csv").open() as f:
        curve = [
            (int(r["env_steps"]), float(r["global_mean_return"]), float(r["worst_client_return"]))
            for r in csv.DictReader(f)
        ]
    return {"seed": seed, "process_wall_s": wall, **summary, "curve": curve}


def run_sb3(seed: int) -> dict:
    """The single-agent reference, timed as its own process."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/sb3_reference.py"), "solve", "--seed", str(seed)],
        check=True,
        capture_output=True,
        text=True,
    )
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_wall_s": time.perf_counter() - start}


def plot(runs: list[dict], sb3: dict, path: Path) -> None:
    """Global mean (solid) and worst-client (dotted) return against env steps, per seed."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        steps, mean, worst = zip(*r["curve"])
        (line,) = ax.plot(steps, mean, marker=".", label=f"fedrl, 10 clients, seed {r['seed']}: mean")
        ax.plot(steps, worst, linestyle=":", color=line.get_color())
    s_steps, s_mean, _ = zip(*sb3["curve"])
    ax.plot(s_steps, s_mean, color="black", marker="x", label="SB3 PPO, 1 agent, standard CartPole")
    ax.axhline(475, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("env steps (all clients together)")
    ax.set_ylabel("greedy evaluation return")
    ax.set_title("Time to solve: 10 heterogeneous CartPoles (dotted: worst client)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_fedrl(seed, Path(tmp) / f"seed{seed}") for seed in args.seeds]
    sb3 = run_sb3(0)
    rows = [
        [
            r["seed"],
            r["solved"],
            r["rounds"],
            f"{r['env_steps']:,}",
            f"{r['process_wall_s']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['global_mean_return']:.1f}",
            f"{r['worst_client_return']:.1f}",
            f"{r['heldout_mean_return']:.1f}",
            f"{r['heldout_worst_return']:.1f}",
        ]
        for r in runs
    ]
    median = statistics.median(r["process_wall_s"] for r in runs)
    worst = max(r["process_wall_s"] for r in runs)
    IMG.mkdir(parents=True, exist_ok=True)
    plot(runs, sb3, IMG / "time_to_solve.png")
    body = "\n\n".join(
        [
            f"## Time to solve: 10 heterogeneous CartPoles\n\n`{COMMAND}` ({machine()})",
            "fedrl: `fedrl run examples/cartpole.yaml --set seed=S` as a process, launch to exit. Target: the global "
            "policy's mean greedy return over the 10 clients' environments >= 475 (500-step episodes), confirmed on 20 "
            "fresh episodes per client (`eval.confirm_episodes`). Held-out: 10 clients never trained on, same "
            "heterogeneity.",
            markdown_table(
                [
                    "seed",
                    "solved",
                    "rounds",
                    "env steps",
                    "process wall s",
                    "in-run wall s",
                    "mean return",
                    "worst client",
                    "held-out mean",
                    "held-out worst",
                ],
                rows,
            ),
            f"Median process wall time: **{median:.1f} s**, worst seed {worst:.1f} s (targets: median <= 5 s, "
            "worst <= 8 s).",
            f"Reference, same script: single-agent SB3 PPO (zoo hyper-parameters) on standard CartPole-v1: "
            f"solved={sb3['solved']} after {sb3['env_steps']:,} env steps, {sb3['process_wall_s']:.1f} s as a process, "
            f"final mean return {sb3['final_mean_return']}. Ratio SB3 wall / fedrl median wall: "
            f"**{sb3['process_wall_s'] / median:.1f}x** (fedrl solves ten different CartPoles at once, SB3 one "
            "standard one).",
            "![time to solve](img/time_to_solve.png)",
        ]
    )
    print(body)
    write_section("time-to-solve", body)


if __name__ == "__main__":
    main()
