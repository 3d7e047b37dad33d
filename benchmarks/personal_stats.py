"""Normalisation statistics: the fleet's (merged by counts) against each client's own (personal).

Two heterogeneous fleets, 5 seeds each, every run normalising observations and scaling rewards:

- the air-quality fleet of examples/airquality.yaml with 10 training sites for 30 rounds (sites whose
  pollution levels, swings and costs differ: each site's observations have their own scale), judged
  by the final mean return, the worst site and 20 held-out sites (which start from every client's
  statistics pooled);
- examples/cartpole.yaml (10 CartPoles at heterogeneity 1, stopping at a confirmed 475), judged by
  the rounds it takes.

    python benchmarks/personal_stats.py          # about 3 minutes on 2 cores
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _report import ROOT, machine, markdown_table, run_parallel, save_figure, write_section

COMMAND = "python benchmarks/personal_stats.py"
SEEDS = (0, 1, 2, 3, 4)
STATS = ("fleet", "personal")
FLEETS = {
    "air quality, 10 sites, 30 rounds": (
        "airquality.yaml",
        ["federation.n_clients=10", "federation.rounds=30", "eval.heldout_clients=20"],
    ),
    "CartPole, 10 clients": ("cartpole.yaml", []),
}


def run_one(job: dict) -> dict:
    """One run (in a worker process); its summary's figures."""
    from fedrl.experiment.loading import load_config
    from fedrl.sim import run as runs

    example, overrides = FLEETS[job["fleet"]]
    # one torch thread: two runs share the two cores (with two threads each they would thrash)
    overrides = [*overrides, "threads=1", f"seed={job['seed']}", f"learner.normalize.stats={job['stats']}"]
    with tempfile.TemporaryDirectory() as tmp:
        current = runs.start(load_config(ROOT / "examples" / example, overrides), Path(tmp) / "run")
        *_, (_, state) = current.rounds(tensorboard=False)
        summary = runs.finish(current, state)
    return {
        **job,
        "rounds": summary["rounds"],
        "solved": summary.get("solved", False),
        "mean": summary["global_mean_return"],
        "worst": summary["worst_client_return"],
        "heldout": summary.get("heldout_mean_return", float("nan")),
    }


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"


def plot(results: list[dict]) -> str:
    """Per fleet: the final mean return of each choice of statistics, seed by seed."""
    fig, axes = plt.subplots(1, len(FLEETS), figsize=(8, 3.2))
    for ax, fleet in zip(axes, FLEETS):
        for i, stats in enumerate(STATS):
            values = [r["mean"] for r in results if r["fleet"] == fleet and r["stats"] == stats]
            ax.scatter(np.full(len(values), i), values, alpha=0.7)
            ax.hlines(statistics.mean(values), i - 0.25, i + 0.25, color="black")
        ax.set_xticks(range(len(STATS)), STATS)
        ax.set_title(fleet, fontsize=9)
        ax.set_ylabel("final mean return")
    return save_figure(fig, "personal_stats.png", "fleet against personal statistics")


def main() -> None:
    jobs = [{"fleet": f, "stats": s, "seed": seed} for f in FLEETS for s in STATS for seed in SEEDS]
    results = run_parallel(run_one, jobs)
    rows = []
    for fleet in FLEETS:
        for stats in STATS:
            rs = sorted((r for r in results if r["fleet"] == fleet and r["stats"] == stats), key=lambda r: r["seed"])
            held = [r["heldout"] for r in rs if np.isfinite(r["heldout"])]
            rows.append(
                [
                    fleet,
                    stats,
                    f"{sum(r['solved'] for r in rs)}/{len(rs)}",
                    ", ".join(str(r["rounds"]) for r in rs),
                    _cell([r["mean"] for r in rs]),
                    _cell([r["worst"] for r in rs]),
                    _cell(held) if held else "-",
                ]
            )
    header = ["fleet", "statistics", "solved", "rounds (seeds 0-4)", "final mean", "worst client", "held out"]
    table = markdown_table(header, rows)
    print(table)
    body = (
        f"## Normalisation statistics: the fleet's or each client's own\n\n`{COMMAND}` ({machine()})\n\n"
        "`learner.normalize.stats`: `fleet` merges every client's observation and return statistics by counts at "
        "the end of each round; `personal` keeps one set per client, which never leaves it (held-out clients start "
        "from all of them pooled). Air quality: examples/airquality.yaml with 10 training sites, 30 rounds, 20 "
        "held-out sites, the run's solved flag is the confirmed crossing of its 5.0 target; CartPole: "
        "examples/cartpole.yaml, stopping at a confirmed 475. Seeds 0-4; mean ± spread over seeds; one torch thread "
        "per run, two runs at a time (so the numbers are not the examples' headers', which use two threads).\n\n"
        f"{table}\n\n{plot(results)}\n"
    )
    write_section("personal-stats", body)


if __name__ == "__main__":
    main()
