"""Clustered federation against one global model and against personalisation, on a fleet of two
kinds of device.

Ten CartPoles, five of them with their motor wired the other way round (push force negated), so no
one policy suits both kinds; eight held-out CartPoles, four of each kind. Each setting runs SEEDS
seeds of PPO with normalised observations, at most ROUNDS rounds, stopping at a confirmed 475:

- one global model (FedAvg);
- one global model, each client fine-tuning it for PERSONAL_STEPS env steps before it is evaluated
  (``personalization.steps``; the held-out clients are evaluated on the global model);
- IFCA with two models (``federation.clusters: 2``; Ghosh et al., NeurIPS 2020).

    python benchmarks/clusters.py         # about 5 minutes on 2 cores
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _report import machine, markdown_table, save_figure, write_section

from fedrl.experiment.loading import parse_config
from fedrl.sim import run as runs

COMMAND = "python benchmarks/clusters.py"
SEEDS = (0, 1, 2)
ROUNDS = 30
PERSONAL_STEPS = 2048
KINDS = ((10.0, 0.3), (10.0, 0.5), (10.0, 0.7), (12.0, 0.4), (8.0, 0.6))
HELDOUT = ((11.0, 0.35), (9.0, 0.45), (10.0, 0.55), (12.0, 0.65))


def fleet(seed: int) -> dict:
    """The two-kinds CartPole fleet (sign of the push force = kind of device)."""

    def kind(rows):
        return [{"force_mag": sign * force, "length": length} for sign in (1.0, -1.0) for force, length in rows]

    return {
        "name": "two-kinds",
        "seed": seed,
        "env": {"family": "cartpole", "clients": kind(KINDS), "heldout": kind(HELDOUT)},
        "learner": {"name": "ppo", "lr": 0.0025, "normalize": {"obs": True, "reward": True}},
        "federation": {"n_clients": 10, "rounds": ROUNDS},
        "eval": {"episodes": 4, "heldout_clients": 8},
    }


SETTINGS = {
    "one global model": {},
    f"global + {PERSONAL_STEPS} fine-tuning steps": {"personalization": {"steps": PERSONAL_STEPS}},
    "IFCA, 2 models": {"federation": {"clusters": 2}},
}


def run_one(out: Path, seed: int, extra: dict) -> dict:
    """One run in this process (its thread count fixed); its summary and learning curve."""
    config = fleet(seed)
    for section, values in extra.items():
        config[section] = {**config.get(section, {}), **values}
    current = runs.start(parse_config(config), out)
    *_, (_, state) = current.rounds(tensorboard=False)
    summary = runs.finish(current, state)
    rows = current.dir.rounds()
    personal = [r.personalized_mean_return for r in rows if r.personalized_mean_return is not None]
    summary["personal_mean"] = personal[-1] if personal else None
    # the fine-tuning setting is drawn by its clients' fine-tuned returns: its global model is the first setting's
    summary["curve"] = [
        (r.env_steps, r.global_mean_return if r.personalized_mean_return is None else r.personalized_mean_return)
        for r in rows
    ]
    return summary


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"


def plot(results: dict[str, list[dict]]) -> str:
    """Mean return over env steps per setting, one line per seed (the fine-tuning setting: after
    fine-tuning)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, summaries) in enumerate(results.items()):
        for j, s in enumerate(summaries):
            steps, returns = zip(*s["curve"])
            ax.plot(steps, returns, color=f"C{i}", alpha=0.8, label=name if j == 0 else None)
    ax.set_xlabel("env steps (all clients)")
    ax.set_ylabel("mean return over the clients")
    ax.set_title("Two kinds of CartPole (push force negated for half)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, "clusters.png", "clusters")


def main() -> None:
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(SETTINGS.items()):
            for seed in SEEDS:
                s = run_one(Path(tmp) / f"{i}-{seed}", seed, extra)
                results.setdefault(name, []).append(s)
                print(f"{name} seed {seed}: rounds {s['rounds']}, mean {s['global_mean_return']:.1f}", flush=True)
    rows = []
    for name, summaries in results.items():
        personal = [s["personal_mean"] for s in summaries if s["personal_mean"] is not None]
        rows.append(
            [
                name,
                f"{sum(s['solved'] for s in summaries)}/{len(summaries)}",
                _cell([s["rounds"] for s in summaries]),
                _cell([s["global_mean_return"] for s in summaries]),
                _cell([s["worst_client_return"] for s in summaries]),
                _cell(personal) if personal else "-",
                _cell([s["heldout_mean_return"] for s in summaries]),
                _cell([s["heldout_worst_return"] for s in summaries]),
            ]
        )
    header = [
        "setting",
        "solved",
        "rounds",
        "final mean",
        "worst client",
        "after fine-tuning",
        "held out",
        "held-out worst",
    ]
    table = markdown_table(header, rows)
    print(table)
    image = plot(results)
    body = (
        f"## Clustered federation: two kinds of device\n\n`{COMMAND}` ({machine()})\n\n"
        f"Ten CartPoles, five of them with the push force negated (a motor wired the other way round), eight "
        f"held-out ones (four of each kind); PPO with normalised observations, at most {ROUNDS} rounds, stopping at "
        f'a confirmed 475; seeds {list(SEEDS)} (mean ± spread). "After fine-tuning": each client\'s return after '
        f"{PERSONAL_STEPS} env steps of its own from the global model, at the last evaluation.\n\n{table}\n\n"
        f"{image}\n"
    )
    write_section("clusters", body)


if __name__ == "__main__":
    main()
