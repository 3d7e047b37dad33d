"""Which algorithm for which fleet: heterogeneity sweep, unreliable fleet, Byzantine clients,
local learners, and the FedPG-BR setting (Fan et al., NeurIPS 2021).

Every run is an in-process simulation (``fedrl.sim``) with one torch thread; two runs at a
time on this 2-core machine. Figures are env steps, rounds, trajectories and simulated
seconds, which do not depend on the machine's load; wall time is reported only as a guide.

    python benchmarks/algorithms.py [--only sweep unreliable byzantine learners fedpg]
"""

from __future__ import annotations

import argparse
import statistics
from copy import deepcopy

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _report import IMG, machine, markdown_table, run_parallel, write_section

COMMAND = "python benchmarks/algorithms.py"


def where() -> str:
    """The machine line, with how the runs were spread over it."""
    return machine().replace(
        f"{__import__('torch').get_num_threads()} torch threads", "1 torch thread per run, 2 runs at a time"
    )


SEEDS = (0, 1, 2)
CARTPOLE = {
    "env": {"family": "cartpole", "heterogeneity": 1.0},
    "learner": {"name": "ppo", "lr": 0.0025, "n_envs": 8, "n_steps": 64},
    "federation": {"n_clients": 10, "rounds": 40, "local_steps": 1024},
    "eval": {"episodes": 4, "heldout_clients": 0},
}
AIRQUALITY = {
    "env": {"family": "airquality", "heterogeneity": 1.0},
    "learner": {"name": "ppo", "lr": 0.003, "n_envs": 8, "n_steps": 128, "ent_coef": 0.01},
    "federation": {"n_clients": 10, "rounds": 30, "local_steps": 1024, "target_return": 5.0},
    "eval": {"episodes": 4, "greedy": False, "heldout_clients": 0},
}
ASYNC_FLEET = {"speed_heterogeneity": 1.0}
STRATEGIES = {  # name: (strategy, fleet, learner fields added to the base learner)
    "FedAvg": ({"name": "fedavg"}, {}, {}),
    "FedProx": ({"name": "fedavg"}, {}, {"prox_mu": 0.01}),
    "FedAdam": ({"name": "fedadam"}, {}, {}),  # fedrl's defaults (server_lr 0.1, tau 0.01: fedopt_defaults.py)
    "SCAFFOLD": ({"name": "scaffold"}, {}, {}),
    "FedAsync": ({"name": "fedasync"}, ASYNC_FLEET, {}),
    "FedBuff": ({"name": "fedbuff", "buffer_size": 5}, ASYNC_FLEET, {}),
}


def run(job: dict) -> dict:
    """One simulation to its target or round limit; returns its figures and trajectory."""
    import time

    import torch

    torch.set_num_threads(1)
    from fedrl.experiment.loading import parse_config
    from fedrl.sim.engine import initial_state, is_solved, run_rounds
    from fedrl.sim.setup import SimSetup

    setup = SimSetup(parse_config(job["config"]))
    state, rows, trajectories = initial_state(setup), [], 0
    start = time.perf_counter()
    for result, _state in run_rounds(setup, state):
        final = result
        trajectories += result.stats.episodes
        rows.append(
            (
                result.round,
                result.env_steps,
                result.sim_time_s,
                result.global_mean_return,
                result.worst_client_return,
                trajectories,
            )
        )
    last = rows[-1]
    # "confirmed" jobs count a run as solved only when a larger evaluation confirmed its crossing
    solved = is_solved(setup, final) if job.get("confirmed") else bool(last[3] >= setup.target_return)
    return {
        **job["tags"],
        "solved": solved,
        "rounds": last[0],
        "env_steps": last[1],
        "sim_time_s": last[2],
        "mean": last[3],
        "worst": last[4],
        "trajectories": last[5],
        "wall_s": time.perf_counter() - start,
        "curve": rows,
    }


def config_with(base: dict, **sections) -> dict:
    """``base`` with whole sections replaced (``learner``/``strategy``) or merged (others)."""
    out = deepcopy(base)
    for key, value in sections.items():
        out[key] = value if key in ("learner", "strategy") else {**out.get(key, {}), **value}
    return out


def run_all(jobs: list[dict], workers: int = 2) -> list[dict]:
    """Run jobs two at a time, printing each as it ends."""
    return run_parallel(run, jobs, workers)


def _fmt(values: list[float], digits: int = 0) -> str:
    mean = statistics.mean(values)
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:,.{digits}f} ± {spread:,.{digits}f}"


def summary_rows(results: list[dict], keys: tuple[str, ...]) -> list[list]:
    """One row per group of ``keys``: solved count, env steps/rounds to target, final returns."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for group, rs in sorted(groups.items(), key=lambda kv: [str(x) for x in kv[0]]):
        solved = [r for r in rs if r["solved"]]
        to_target = _fmt([r["env_steps"] for r in solved]) if solved else "not reached"
        rounds = _fmt([r["rounds"] for r in solved], 1) if solved else "-"
        rows.append(
            [
                *group,
                f"{len(solved)}/{len(rs)}",
                to_target,
                rounds,
                _fmt([r["mean"] for r in rs], 1),
                _fmt([r["worst"] for r in rs], 1),
            ]
        )
    return rows


HEADER = ["solved", "env steps to target (solved runs)", "rounds to target", "final mean return", "final worst client"]


def plot_bars(results: list[dict], group: str, series: str, value: str, title: str, name: str, ylabel: str) -> str:
    """Grouped bars of the mean of ``value`` (error bar: spread over seeds)."""
    groups = sorted({r[group] for r in results}, key=str)
    names = list(dict.fromkeys(r[series] for r in results))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for i, s in enumerate(names):
        vals = [[r[value] for r in results if r[group] == g and r[series] == s] for g in groups]
        ax.bar(
            np.arange(len(groups)) + i * width,
            [np.mean(v) if v else 0 for v in vals],
            width,
            yerr=[np.std(v) if v else 0 for v in vals],
            label=str(s),
        )
    ax.set_xticks(np.arange(len(groups)) + width * (len(names) - 1) / 2, [str(g) for g in groups])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / name, dpi=110)
    plt.close(fig)
    return f"![{title}](img/{name})"


def sweep() -> None:
    """Six strategies x two families x heterogeneity 0, 0.5, 1 x three seeds."""
    jobs = []
    for env_name, base in (("cartpole", CARTPOLE), ("airquality", AIRQUALITY)):
        for het in (0.0, 0.5, 1.0):
            for name, (strategy, fleet, learner) in STRATEGIES.items():
                for seed in SEEDS:
                    cfg = config_with(
                        base,
                        strategy=strategy,
                        fleet=fleet,
                        env={"heterogeneity": het},
                        learner={**base["learner"], **learner, **NORMALIZE["obs+reward"]},
                    )
                    cfg["seed"] = seed
                    jobs.append(
                        {"config": cfg, "tags": {"env": env_name, "heterogeneity": het, "strategy": name, "seed": seed}}
                    )
    results = run_all(jobs)
    parts = [
        f"## Heterogeneity sweep\n\n`{COMMAND} --only sweep` ({where()})",
        "10 clients, PPO locally (1,024 env steps per client per round) with observations normalised and rewards "
        "scaled by the fleet's statistics (`learner.normalize`), 3 seeds each (mean ± spread). CartPole: "
        "target 475, at most 40 rounds. Air-quality: target 5.0 (mean sampled return over the sites; the hand "
        "policy of docs/envs.md scores about 5-6 at heterogeneity 1), at most 30 rounds. FedAsync and FedBuff "
        "(K=5) run asynchronously on a fleet whose speeds spread 4x; a 'round' there is 10 arrivals.",
    ]
    for env_name in ("cartpole", "airquality"):
        mine = [r for r in results if r["env"] == env_name]
        parts.append(
            f"### {env_name}\n\n"
            + markdown_table(["heterogeneity", "strategy", *HEADER], summary_rows(mine, ("heterogeneity", "strategy")))
        )
        parts.append(
            plot_bars(
                mine,
                "heterogeneity",
                "strategy",
                "mean",
                f"{env_name}: final mean return by heterogeneity",
                f"sweep_{env_name}.png",
                "final mean return",
            )
        )
    write_section("sweep", "\n\n".join(parts))


def unreliable() -> None:
    """30% dropouts per round and 20% of clients 5x slower: sync with a deadline vs async."""
    fleet = {
        "dropout": 0.3,
        "straggler_fraction": 0.2,
        "straggler_slowdown": 5.0,
        "step_time_s": 0.001,
        "latency_s": 0.05,
    }
    methods = {
        "FedAvg, sync, no deadline": ({"name": "fedavg"}, fleet),
        "FedAvg, sync, deadline 2 s": ({"name": "fedavg"}, {**fleet, "deadline_s": 2.0}),
        "FedAsync": ({"name": "fedasync"}, fleet),
        "FedBuff (K=5)": ({"name": "fedbuff", "buffer_size": 5}, fleet),
    }
    jobs = []
    for name, (strategy, fl) in methods.items():
        for seed in SEEDS:
            cfg = config_with(CARTPOLE, strategy=strategy, fleet=fl, federation={"rounds": 60})
            cfg["seed"] = seed
            jobs.append({"config": cfg, "tags": {"method": name, "seed": seed}})
    results = run_all(jobs)
    rows = []
    for name in methods:
        rs = [r for r in results if r["method"] == name]
        solved = [r for r in rs if r["solved"]]
        rows.append(
            [
                name,
                f"{len(solved)}/{len(rs)}",
                _fmt([r["sim_time_s"] for r in solved], 1) if solved else "not reached",
                _fmt([r["env_steps"] for r in solved]) if solved else "-",
                _fmt([r["mean"] for r in rs], 1),
            ]
        )
    body = "\n\n".join(
        [
            f"## Unreliable fleet\n\n`{COMMAND} --only unreliable` ({where()})",
            "10 CartPole clients (heterogeneity 1): each round (or retry, in async) a client is away with probability "
            "0.3; "
            "2 of the 10 compute 5x slower (1,024 steps take 1.0 s simulated on a normal device, 5.1 s on a straggler, "
            "plus 0.05 s each way on the link). Simulated wall-clock time to a mean return of 475.",
            markdown_table(
                ["method", "solved", "simulated seconds to target", "env steps to target", "final mean return"], rows
            ),
            _plot_time_curves(
                results, "method", "unreliable.png", "Unreliable fleet: mean return against simulated time"
            ),
        ]
    )
    write_section("unreliable", body)


def _plot_time_curves(results: list[dict], key: str, name: str, title: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        _, _, t, mean, _, _ = zip(*r["curve"])
        color = colors.setdefault(r[key], f"C{len(colors)}")
        ax.plot(t, mean, color=color, alpha=0.8, label=r[key] if r["seed"] == 0 else None)
    ax.axhline(475, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("global mean return")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=110)
    plt.close(fig)
    return f"![{title}](img/{name})"


def byzantine() -> None:
    """20% sign-flip or 20% Gaussian-noise attackers against the mean and robust rules."""
    rules = {
        "mean (FedAvg)": {"rule": "mean"},
        "median": {"rule": "median"},
        "trimmed mean 0.2": {"rule": "trimmed_mean", "trim_ratio": 0.2},
        "Krum f=2": {"rule": "krum", "byzantine": 2},
        "multi-Krum f=2": {"rule": "multikrum", "byzantine": 2},
    }
    attacks = {
        "sign flip x3": {"kind": "sign_flip", "scale": 3.0},
        "Gaussian sigma 1": {"kind": "gaussian", "sigma": 1.0},
    }
    jobs = []
    for attack_name, attack in attacks.items():
        for rule_name, rule in rules.items():
            for seed in SEEDS:
                cfg = config_with(
                    CARTPOLE, strategy={"name": "fedavg", "robust": rule}, attack={"fraction": 0.2, **attack}
                )
                cfg["seed"] = seed
                jobs.append({"config": cfg, "tags": {"attack": attack_name, "rule": rule_name, "seed": seed}})
    results = run_all(jobs)
    body = "\n\n".join(
        [
            f"## Byzantine clients\n\n`{COMMAND} --only byzantine` ({where()})",
            "10 CartPole clients (heterogeneity 1), 2 of them malicious for the whole run (the strategy is not told "
            "which). "
            "At most 40 rounds.",
            markdown_table(["attack", "rule", *HEADER], summary_rows(results, ("attack", "rule"))),
            plot_bars(
                results,
                "attack",
                "rule",
                "mean",
                "Byzantine clients: final mean return",
                "byzantine.png",
                "final mean return",
            ),
        ]
    )
    write_section("byzantine", body)


LEARNER_SEEDS = (0, 1, 2, 3, 4)
NORMALIZE = {"off": {}, "obs+reward": {"normalize": {"obs": True, "reward": True}}}


def learners() -> None:
    """PPO, REINFORCE, A2C and DQN federated on CartPole, with and without normalisation: env
    steps to a confirmed target."""
    learner_configs = {
        "PPO": ({"name": "ppo", "lr": 0.0025, "n_envs": 8, "n_steps": 64}, {}),
        "REINFORCE": ({"name": "reinforce", "lr": 0.005, "n_envs": 8}, {"local_steps": None, "local_episodes": 16}),
        "A2C": ({"name": "a2c", "lr": 0.0007, "n_envs": 8}, {}),
        "DQN": ({"name": "dqn", "n_envs": 4, "learning_starts": 1000}, {}),
    }
    jobs = []
    for name, (learner, fed) in learner_configs.items():
        for norm_name, norm in NORMALIZE.items():
            for seed in LEARNER_SEEDS:
                cfg = config_with(CARTPOLE, learner={**learner, **norm}, federation={"rounds": 60, **fed})
                cfg["seed"] = seed
                tags = {"learner": name, "normalize": norm_name, "seed": seed}
                jobs.append({"config": cfg, "tags": tags, "confirmed": True})
    results = run_all(jobs)
    body = "\n\n".join(
        [
            f"## Local learners\n\n`{COMMAND} --only learners` ({where()})",
            "10 CartPole clients (heterogeneity 1), FedAvg, 1,024 env steps per client per round (REINFORCE: 16 whole "
            f"episodes), at most 60 rounds, seeds {list(LEARNER_SEEDS)}, without and with `learner.normalize` (obs "
            "and reward). Solved: the global mean reached 475 and a larger evaluation (20 fresh episodes per "
            "client) confirmed it.",
            markdown_table(["learner", "normalize", *HEADER], summary_rows(results, ("learner", "normalize"))),
            plot_bars(
                results,
                "learner",
                "normalize",
                "env_steps",
                "Local learners: env steps used (to target or limit)",
                "learners.png",
                "env steps",
            ),
        ]
    )
    write_section("learners", body)


def fedpg() -> None:
    """The FedPG-BR setting: standard CartPole-v1, 10 agents, 3 Byzantine; 1 vs 10 honest agents."""
    settings = {
        "1 agent": ({"n_clients": 1}, None),
        "10 honest agents": ({}, None),
        "10 agents, 3 random noise": ({}, {"fraction": 0.3, "kind": "gaussian", "sigma": 1.0}),
        "10 agents, 3 random action": ({}, {"fraction": 0.3, "kind": "random_policy"}),
        "10 agents, 3 sign flipping": ({}, {"fraction": 0.3, "kind": "sign_flip", "scale": 3.0}),
    }
    jobs = []
    for name, (fed, attack) in settings.items():
        for seed in SEEDS:
            strategy = (
                {"name": "fedavg", "robust": {"rule": "trimmed_mean", "trim_ratio": 0.3}}
                if attack
                else {"name": "fedavg"}
            )
            cfg = config_with(
                CARTPOLE,
                env={"heterogeneity": 0.0},
                strategy=strategy,
                federation={"rounds": 80, **fed},
                attack=attack or {},
            )
            cfg["seed"] = seed
            jobs.append({"config": cfg, "tags": {"setting": name, "seed": seed, "agents": fed.get("n_clients", 10)}})
    results = run_all(jobs)
    rows = []
    per_agent = {}
    for name in settings:
        rs = [r for r in results if r["setting"] == name]
        solved = [r for r in rs if r["solved"]]
        per_agent[name] = [r["trajectories"] / r["agents"] for r in solved]
        rows.append(
            [
                name,
                f"{len(solved)}/{len(rs)}",
                _fmt(per_agent[name]) if solved else "not reached",
                _fmt([r["env_steps"] / r["agents"] for r in solved]) if solved else "-",
            ]
        )
    speedup = (
        statistics.mean(per_agent["1 agent"]) / statistics.mean(per_agent["10 honest agents"])
        if per_agent["1 agent"] and per_agent["10 honest agents"]
        else float("nan")
    )
    body = "\n\n".join(
        [
            f"## Against the literature: the FedPG-BR setting\n\n`{COMMAND} --only fedpg` ({where()})",
            'Fan et al., "Fault-Tolerant Federated Reinforcement Learning with Theoretical Guarantee" (FedPG-BR), '
            "NeurIPS 2021: CartPole-v1, 10 agents, 3 of them Byzantine (random noise, random actions, sign flipping); "
            "they report about 1,000 trajectories per agent to reach a return of 475 with 10 honest agents, and 3,000 "
            "to "
            "4,000 for a single agent. Here: standard CartPole (heterogeneity 0), PPO locally, FedAvg for honest "
            "fleets "
            "and a coordinate-wise trimmed mean (30% each end) under attack; a trajectory is a finished training "
            "episode, counted on every agent (attackers included, they train too).",
            markdown_table(["setting", "solved", "trajectories per agent to 475", "env steps per agent to 475"], rows),
            f"Speed-up from 1 to 10 honest agents, in trajectories per agent: **{speedup:.1f}x**. "
            f"Against FedPG-BR's figures: {statistics.mean(per_agent['10 honest agents']):,.0f} trajectories per agent "
            f"with 10 honest agents (theirs: about 1,000) and {statistics.mean(per_agent['1 agent']):,.0f} for one "
            "agent "
            "(theirs: 3,000 to 4,000). "
            + (
                "The speed-up is small because PPO with 8 parallel environments already solves the one standard "
                "CartPole "
                "in a few rounds on its own: ten identical agents mostly repeat each other's work, and every agent "
                "trains "
                "its full local budget each round (they did not need fewer rounds either). On one identical task, "
                "federation "
                "here buys tolerance of faulty agents, not sample efficiency; FedPG-BR's agents, policy gradients "
                "without "
                "PPO's sample reuse, have more to gain from pooling."
                if speedup < 2
                else ""
            ),
        ]
    )
    write_section("fedpg-br", body)


SECTIONS = {"sweep": sweep, "unreliable": unreliable, "byzantine": byzantine, "learners": learners, "fedpg": fedpg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    for name in parser.parse_args().only:
        print(f"== {name}", flush=True)
        SECTIONS[name]()


if __name__ == "__main__":
    main()
