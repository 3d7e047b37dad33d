"""Federated meta-learning: how quickly sites never trained on adapt the learned policy.

The air-quality fleet at heterogeneity 1 (examples/airquality.yaml: PPO locally, observations
normalised, rewards scaled) with 10 training sites for ROUNDS rounds, trained by FedAvg and by
Reptile (Nichol et al. 2018: the meta-step annealed from 1 to 0 over the run, and a constant 0.5).
Then each of 20 held-out sites adapts the final policy for k of its own env steps (k = 0, a few,
many) with the run's learner and is evaluated, and adapts the untrained initial policy for as many
steps (from scratch): ``eval.adapt_steps``, the evaluation of Fallah et al. (NeurIPS 2020).

    python benchmarks/meta.py         # about 5 minutes on 2 cores
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _report import ROOT, machine, markdown_table, save_figure, write_section

from fedrl.experiment.loading import load_config
from fedrl.sim import run as runs

COMMAND = "python benchmarks/meta.py"
SEEDS = (0, 1, 2, 3, 4)
ROUNDS = 30
STEPS = (0, 2048, 8192)
STRATEGIES = {
    "FedAvg": {"name": "fedavg"},
    "Reptile, eps 1 -> 0": {"name": "reptile", "meta_lr": 1.0, "anneal_rounds": ROUNDS},
    "Reptile, eps 0.5": {"name": "reptile", "meta_lr": 0.5},
}


def run_one(out: Path, seed: int, strategy: dict) -> dict:
    """One run in this process (its thread count fixed); returns its summary."""
    overrides = [
        f"seed={seed}",
        "learner.normalize.stats=fleet",  # as measured and published (the example now keeps them per site)
        "federation.n_clients=10",
        f"federation.rounds={ROUNDS}",
        "federation.stop_at_target=false",
        "eval.heldout_clients=20",
        f"eval.adapt_steps={list(STEPS)}",
        f"strategy={strategy}",
    ]
    current = runs.start(load_config(ROOT / "examples" / "airquality.yaml", overrides), out)
    *_, (_, state) = current.rounds(tensorboard=False)
    return runs.finish(current, state)


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"


def plot(results: dict[str, list[dict]]) -> str:
    """Held-out return against adaptation steps, per strategy and from scratch (mean, spread over seeds)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    x = list(range(len(STEPS)))
    for name, summaries in results.items():
        means = [statistics.mean(s[f"heldout_adapted_{k}"] for s in summaries) for k in STEPS]
        spread = [statistics.pstdev(s[f"heldout_adapted_{k}"] for s in summaries) for k in STEPS]
        ax.errorbar(x, means, yerr=spread, marker="o", capsize=3, label=name)
    first = next(iter(results.values()))
    scratch = [statistics.mean(s[f"heldout_scratch_{k}"] for s in first) for k in STEPS]
    ax.plot(x, scratch, "k--", marker="x", label="from scratch")
    ax.set_xticks(x, [f"{k:,}" for k in STEPS])
    ax.set_xlabel("adaptation env steps per held-out site")
    ax.set_ylabel("held-out mean return")
    ax.set_title("Air quality, 20 held-out sites: return after adapting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, "meta.png", "meta-learning")


def main() -> None:
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, strategy in STRATEGIES.items():
            for seed in SEEDS:
                summary = run_one(Path(tmp) / f"{strategy['name']}-{len(results)}-{seed}", seed, strategy)
                results.setdefault(name, []).append(summary)
                print(f"{name} seed {seed}: {[round(summary[f'heldout_adapted_{k}'], 2) for k in STEPS]}", flush=True)
    rows = [
        [name, _cell([s["global_mean_return"] for s in summaries])]
        + [_cell([s[f"heldout_adapted_{k}"] for s in summaries]) for k in STEPS]
        for name, summaries in results.items()
    ]
    first = next(iter(results.values()))  # scratch does not depend on the strategy: the same seeds' runs
    rows.append(
        ["from scratch (initial policy)", "-"] + [_cell([s[f"heldout_scratch_{k}"] for s in first]) for k in STEPS]
    )
    header = ["trained by", "training sites, final"] + [f"held out, after {k:,} steps" for k in STEPS]
    table = markdown_table(header, rows)
    print(table)
    image = plot(results)
    body = (
        f"## Federated meta-learning: adapting on new sites\n\n`{COMMAND}` ({machine()})\n\n"
        f"Air quality at heterogeneity 1 (`examples/airquality.yaml`, observations normalised), 10 training sites, "
        f"{ROUNDS} rounds of 2,048 env steps per site, seeds {list(SEEDS)} (mean ± spread). Each of 20 held-out "
        f"sites then adapts the final policy for k env steps of its own with the run's PPO "
        f'(`eval.adapt_steps`) and is evaluated on the same episodes for every k; "from scratch" adapts the '
        f"untrained initial policy as long.\n\n{table}\n\n{image}\n"
    )
    write_section("meta", body)


if __name__ == "__main__":
    main()
