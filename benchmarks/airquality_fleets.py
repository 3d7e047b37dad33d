"""The air-quality fleet at heterogeneity 1 trained every way fedrl offers, side by side, against the
hand-written policy of docs/envs.md. examples/airquality.yaml (PPO locally, observations
normalised, rewards scaled, 2,048 env steps per site per round) with 10 sites, and with 100 sites
of which 10 are sampled a round, ROUNDS rounds, SEEDS seeds; 20 held-out sites. Both fleets again
for the example's own 150 rounds (LONG_ROUNDS), with the methods of LONG_METHODS: at 10 sites a
round of 100, each site trains in about 3 of 30 rounds. The methods: FedAvg, FedProx (mu 0.01), SCAFFOLD,
Reptile (meta step annealed to 0), IFCA with two models, local training alone (``learner.federate:
none``: nothing shared; a held-out site gets the untrained policy), and FedAvg and FedProx with
each site keeping its own normalisation statistics (``learner.normalize.stats: personal``; held-out
sites start from all of them pooled). "Sites" is the last evaluation of the training sites (4
sampled episodes each, each on its own model where it has one); the hand policy plays HAND_EPISODES
episodes on the same sites.

    python benchmarks/airquality_fleets.py      # about an hour on 2 cores
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

COMMAND = "python benchmarks/airquality_fleets.py"
SEEDS = (0, 1, 2, 3, 4)
ROUNDS, LONG_ROUNDS = 30, 150
HELDOUT = 20
HAND_EPISODES, HAND_SEED = 16, 2024
FLEETS = {  # name: (sites, fraction sampled a round, rounds)
    "10 sites": (10, 1.0, ROUNDS),
    f"10 sites, {LONG_ROUNDS} rounds": (10, 1.0, LONG_ROUNDS),
    "100 sites, 10 a round": (100, 0.1, ROUNDS),
    f"100 sites, 10 a round, {LONG_ROUNDS} rounds": (100, 0.1, LONG_ROUNDS),
}
METHODS = {  # name: (strategy, learner fields, federation fields)
    "FedAvg": ({"name": "fedavg"}, {}, {}),
    "FedProx, mu 0.01": ({"name": "fedavg"}, {"prox_mu": 0.01}, {}),
    "SCAFFOLD": ({"name": "scaffold"}, {}, {}),
    "Reptile": ({"name": "reptile"}, {}, {}),  # annealed over the fleet's rounds (run)
    "IFCA, 2 models": ({"name": "fedavg"}, {}, {"clusters": 2}),
    "local only": ({"name": "fedavg"}, {"federate": "none"}, {}),
    "FedAvg, personal statistics": ({"name": "fedavg"}, {"normalize.stats": "personal"}, {}),
    "FedProx, personal statistics": ({"name": "fedavg"}, {"prox_mu": 0.01, "normalize.stats": "personal"}, {}),
}
LONG_METHODS = ("FedAvg", "FedProx, mu 0.01", "FedAvg, personal statistics", "FedProx, personal statistics")


def methods_of(fleet: str) -> tuple[str, ...]:
    """The methods run on ``fleet``: all of them, or LONG_METHODS on the long run."""
    return LONG_METHODS if FLEETS[fleet][2] == LONG_ROUNDS else tuple(METHODS)


def run(job: dict) -> dict:
    """One run to its round limit, in this process on one thread; its figures and the hand policy's."""
    from airquality_hand import hand_returns

    from fedrl.experiment.aggregation import heldout_returns
    from fedrl.experiment.loading import load_config
    from fedrl.sim import run as runs

    n, fraction, rounds = FLEETS[job["fleet"]]
    strategy, learner, federation = METHODS[job["method"]]
    if strategy["name"] == "reptile":
        strategy = {**strategy, "anneal_rounds": rounds}
    if strategy["name"] == "scaffold":
        strategy = {**strategy, "n_clients": n}
    overrides = [
        f"seed={job['seed']}",
        "threads=1",
        "learner.normalize.stats=fleet",  # the example keeps them per site; the personal rows say so themselves
        f"federation.n_clients={n}",
        f"federation.fraction={fraction}",
        f"federation.rounds={rounds}",
        "federation.stop_at_target=false",
        "eval.every=5",
        f"eval.heldout_clients={HELDOUT}",
        f"strategy={strategy}",
        *(f"learner.{k}={v}" for k, v in learner.items()),
        *(f"federation.{k}={v}" for k, v in federation.items()),
    ]
    with tempfile.TemporaryDirectory() as tmp:  # the run as `fedrl run` makes it: threads, allocator
        current = runs.start(load_config(ROOT / "examples" / "airquality.yaml", overrides), Path(tmp) / "run")
        *_, (result, state) = current.rounds(tensorboard=False)
    setup = current.setup
    acting = runs.heldout_acting(setup, state, setup.heldout_params(HELDOUT))
    held = heldout_returns(setup, acting, HELDOUT, setup.config.eval.episodes, state.norm)
    hand = hand_returns(setup.family, setup.env_params, HAND_EPISODES, HAND_SEED).mean(1)
    hand_held = hand_returns(setup.family, setup.heldout_params(HELDOUT), HAND_EPISODES, HAND_SEED).mean(1)
    return {
        **job,
        "sites": result.global_mean_return,
        "worst": result.worst_client_return,
        "heldout": float(held.mean()),
        "hand": float(hand.mean()),
        "hand_heldout": float(hand_held.mean()),
        "env_steps": result.env_steps,
    }


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"


def plot(results: list[dict]) -> str:
    """Sites' and held-out mean return per method and fleet, relative to the hand policy."""
    fig, axes = plt.subplots(1, len(FLEETS), figsize=(4.5 * len(FLEETS), 4), sharey=True)
    width = 0.38
    for ax, fleet in zip(axes, FLEETS):
        methods = methods_of(fleet)
        x = np.arange(len(methods))
        for i, (key, hand, label) in enumerate(
            (("sites", "hand", "training sites"), ("heldout", "hand_heldout", "held out"))
        ):
            ratios = [[r[key] / r[hand] for r in results if r["fleet"] == fleet and r["method"] == m] for m in methods]
            ax.bar(x + i * width, [np.mean(v) for v in ratios], width, yerr=[np.std(v) for v in ratios], label=label)
        ax.axhline(1.0, color="k", lw=1, ls="--")
        ax.set_xticks(x + width / 2, list(methods), rotation=30, ha="right", fontsize=8)
        ax.set_title(fleet)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("mean return / hand policy's")
    axes[0].legend(fontsize=8)
    return save_figure(fig, "airquality_fleets.png", "air-quality fleets")


def main() -> None:
    jobs = [{"fleet": f, "method": m, "seed": s} for f in FLEETS for m in methods_of(f) for s in SEEDS]
    results = run_parallel(run, jobs)
    sections = []
    for fleet in FLEETS:
        rows = []
        mine = [r for r in results if r["fleet"] == fleet]
        for method in methods_of(fleet):
            rs = [r for r in mine if r["method"] == method]
            rows.append(
                [
                    method,
                    _cell([r["sites"] for r in rs]),
                    _cell([r["worst"] for r in rs]),
                    _cell([r["heldout"] for r in rs]),
                    f"{sum(r['sites'] >= r['hand'] for r in rs)}/{len(rs)}",
                ]
            )
        hand = _cell([r["hand"] for r in mine if r["method"] == "FedAvg"])
        hand_held = _cell([r["hand_heldout"] for r in mine if r["method"] == "FedAvg"])
        rows.append(["hand policy", hand, "-", hand_held, "-"])
        header = ["method", "training sites", "worst site", f"{HELDOUT} held-out sites", "seeds at or above hand"]
        sections.append(f"**{fleet}**\n\n" + markdown_table(header, rows))
        print(sections[-1])
    body = (
        f"## Air quality: every method against the hand policy\n\n`{COMMAND}` ({machine()}; one torch thread per run, "
        f"two runs at a time)\n\n`examples/airquality.yaml` at heterogeneity 1 (observations normalised by the "
        f"fleet's statistics, but in the personal rows), "
        f"{ROUNDS} rounds (or {LONG_ROUNDS}, the example's own, where a fleet says so) of 2,048 env steps per "
        "sampled site, "
        f"seeds {list(SEEDS)} (mean ± spread). Training "
        f"sites: the last evaluation (4 sampled episodes per site, each site on its own model where it has one); "
        f"the hand policy (`airquality.hand_policy`) plays {HAND_EPISODES} episodes per site on the same sites. "
        f"Local only: `learner.federate: none`, nothing shared (a held-out site gets the untrained policy). "
        f"Personal statistics: `learner.normalize.stats: personal`, one shared model whose input scaling is each "
        f"site's own (a personalisation of the scaling alone); held-out sites use every site's statistics pooled.\n\n"
        + "\n\n".join(sections)
        + f"\n\n{plot(results)}\n"
    )
    write_section("airquality-fleets", body)


if __name__ == "__main__":
    main()
