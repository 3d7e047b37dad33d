"""The learner defaults of each environment family, found by a sweep rather than by hand on one seed.

Each family (Pendulum, MountainCar) runs a fleet of 10 clients at heterogeneity 1 (FedAvg, 2,048 env
steps per client per round) over SEEDS seeds for every learner setting in its grid, the target
confirmed on 20 episodes per client. A setting pins every key of its learner (the learner's own
defaults under the grid's), so the family defaults already in fedrl do not leak into the sweep.
Each family's best setting (most seeds solved, then the highest IQM of the final mean return) is
what fedrl takes on that family when an experiment leaves the learner unset
(``EnvFamily.learner_defaults``); the script says whether fedrl's defaults are that setting.

MountainCar's target, -110, is the standard car's. Two references run on the same training cars
(64 episodes each): the classic hand policy (push in the direction the car moves,
``fedrl.envs.mountaincar.hand_policy``) and a planner that knows each car's physics (value
iteration on a 451 x 451 grid of position and velocity, then one step of lookahead on the real
dynamics): what a controller built for each car reaches, which no single policy can beat.

    python benchmarks/family_defaults.py         # about 40 minutes on 2 cores
    python benchmarks/family_defaults.py --only mountaincar
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _report import IMG, machine, markdown_table, run_parallel, write_section

COMMAND = "python benchmarks/family_defaults.py"
SEEDS = (0, 1, 2, 3, 4)
EPISODES = 64  # per car, for the MountainCar references
FLEET = {"federation": {"n_clients": 10, "local_steps": 2048}, "eval": {"episodes": 4}}
PPO_TUNED = {"n_envs": 8, "n_steps": 128, "epochs": 10, "minibatches": 8}
MC_NORMALISED = {"n_envs": 16, "n_steps": 64, "gae_lambda": 0.98, "normalize": {"obs": True, "reward": True}}
GRIDS = {  # family: (rounds, named learner settings over the learner's own defaults)
    "pendulum": (
        150,
        {
            "PPO's defaults": {"name": "ppo"},
            "gamma 0.98": {"name": "ppo", "gamma": 0.98},
            "gamma 0.98, 8 envs x 128 steps, 10 epochs of 8 minibatches": {"name": "ppo", **PPO_TUNED, "gamma": 0.98},
            "gamma 0.95, 8 envs x 128 steps, 10 epochs of 8 minibatches": {"name": "ppo", **PPO_TUNED, "gamma": 0.95},
        },
    ),
    "mountaincar": (
        100,
        {
            "PPO's defaults": {"name": "ppo"},
            "normalised, entropy 0.01": {"name": "ppo", **MC_NORMALISED, "ent_coef": 0.01},
            "normalised, entropy 0.01, 10 epochs of 8 minibatches": {
                "name": "ppo",
                **MC_NORMALISED,
                "ent_coef": 0.01,
                "epochs": 10,
                "minibatches": 8,
            },
            "normalised, 10 epochs of 8 minibatches": {"name": "ppo", **MC_NORMALISED, "epochs": 10, "minibatches": 8},
        },
    ),
}


def where() -> str:
    """The machine line, with how the runs were spread over it."""
    return machine().replace(
        f"{__import__('torch').get_num_threads()} torch threads", "1 torch thread per run, 2 runs at a time"
    )


def experiment(family: str, rounds: int, seed: int, learner: dict | None) -> dict:
    """The experiment of one run; ``learner`` None leaves it to the family's defaults."""
    config = {
        "name": family,
        "seed": seed,
        "threads": 1,
        "env": {"family": family, "heterogeneity": 1.0},
        "federation": {**FLEET["federation"], "rounds": rounds},
        "eval": FLEET["eval"],
    }
    from fedrl.experiment.loading import pinned_learner

    return config if learner is None else {**config, "learner": pinned_learner(learner)}


def run(job: dict) -> dict:
    """One run into its own directory; returns where."""
    import torch

    torch.set_num_threads(1)
    from fedrl.experiment.loading import parse_config
    from fedrl.sim import run as runs

    current = runs.start(parse_config(job["config"]), Path(job["out"]))
    *_, (_, state) = current.rounds(tensorboard=False)
    runs.finish(current, state)
    return {"out": job["out"], "setting": job["setting"], "seed": job["config"]["seed"]}


def planner_policy(params: np.ndarray, grid: int = 451):
    """A MountainCar controller per car that knows its physics: value iteration of the steps to the
    goal on a ``grid`` x ``grid`` lattice (bilinear interpolation), acting by one step of lookahead,
    both through the family's own ``transition``."""
    from scipy.ndimage import map_coordinates

    from fedrl.envs import mountaincar as mc

    def q_values(value: np.ndarray, row: np.ndarray, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``(3, n)``: -1 and the value reached, for each action from the states ``x``, ``v`` ``(n,)``."""
        out = []
        for a in range(3):
            after, _, goal = mc.transition(
                row[None], mc.MountainCarPhysics(x[None], v[None]), np.full((1, len(x)), a), None
            )
            at = np.stack(
                [
                    (after.position[0] - mc.MIN_POSITION) / (mc.MAX_POSITION - mc.MIN_POSITION) * (grid - 1),
                    (after.velocity[0] + mc.MAX_SPEED) / (2 * mc.MAX_SPEED) * (grid - 1),
                ]
            )
            out.append(np.where(goal[0], -1.0, -1.0 + map_coordinates(value, at, order=1, mode="nearest")))
        return np.stack(out)

    xs, vs = (
        axis.ravel()
        for axis in np.meshgrid(
            np.linspace(mc.MIN_POSITION, mc.MAX_POSITION, grid),
            np.linspace(-mc.MAX_SPEED, mc.MAX_SPEED, grid),
            indexing="ij",
        )
    )
    values = []
    for row in params:
        value = np.full((grid, grid), -200.0)
        for _ in range(200):
            value = q_values(value, row, xs, vs).max(0).reshape(grid, grid)
        values.append(value)

    def act(obs: np.ndarray) -> np.ndarray:
        x, v = obs[..., 0].astype(np.float64), obs[..., 1].astype(np.float64)
        return np.stack([q_values(values[c], params[c], x[c], v[c]).argmax(0) for c in range(len(params))])

    return act


def mountaincar_references() -> str:
    """The hand policy and the per-car planner on each seed's training cars: a table and what it says."""
    from airquality_hand import play

    from fedrl.envs import FAMILIES, sample_params
    from fedrl.envs.mountaincar import hand_policy

    family, rows = FAMILIES["mountaincar"], []
    hand, planned = [], []
    for seed in SEEDS:
        params = sample_params(family, FLEET["federation"]["n_clients"], 1.0, seed)
        hand.append(play(family, params, EPISODES, 0, hand_policy).mean(1))
        planned.append(play(family, params, EPISODES, 0, planner_policy(params)).mean(1))
        print(f"mountaincar references, seed {seed}: hand {hand[-1].mean():.1f}, planner {planned[-1].mean():.1f}")
    for name, results in (
        ("push with the velocity (hand policy)", hand),
        ("a planner per car, physics known", planned),
    ):
        means, worst = [r.mean() for r in results], [r.min() for r in results]
        rows.append(
            [name, f"{np.mean(means):.1f} ± {np.std(means):.1f}", f"{np.mean(worst):.1f} ± {np.std(worst):.1f}"]
        )
    table = markdown_table(
        ["reference on the same training cars", "mean return (mean ± spread over seeds)", "worst car"], rows
    )
    means = [r.mean() for r in planned]
    reach = "reaches" if min(means) >= family.solved_return else "does not always reach"
    return (
        f"{table}\n\nThe planner {reach} the standard car's {family.solved_return:g} (its fleet means "
        f"{min(means):.1f} to {max(means):.1f} over the seeds), near the best any controller of these cars can do. "
        "It knows each car's engine force and slope, which a policy shared by the fleet never observes: from the "
        "same position and speed a weak car must swing back where a strong one drives on, and one policy makes "
        "that choice for every car at once."
    )


def sweep(family: str, out: Path) -> str:
    """Every setting of ``family``'s grid over the seeds: its section of the report."""
    from fedrl.envs import FAMILIES
    from fedrl.experiment.loading import parse_config
    from fedrl.sim.compare import markdown, plot_comparison, read_run, summarize

    rounds, settings = GRIDS[family]
    jobs = [
        {
            "config": experiment(family, rounds, seed, learner),
            "out": str(out / f"{family}-{i}-seed{seed}"),
            "setting": i,
        }
        for i, learner in enumerate(settings.values())
        for seed in SEEDS
    ]
    done = sorted(run_parallel(run, jobs), key=lambda r: (r["setting"], r["seed"]))
    names = list(settings)
    groups: dict[str, list] = {name: [] for name in names}
    for r in done:
        groups[names[r["setting"]]].append(read_run(Path(r["out"])))
    summaries = [s._replace(label=name) for name, s in zip(names, summarize(groups))]
    best = max(summaries, key=lambda s: (int(s.solved.split("/")[0]), s.final_mean[0]))
    target = FAMILIES[family].solved_return
    image = f"family_{family}.png"
    IMG.mkdir(parents=True, exist_ok=True)
    plot_comparison(groups, IMG / image, target)
    chosen = groups[best.label][0].config["learner"]
    ours = parse_config(experiment(family, rounds, 0, None)).learner.model_dump(mode="json")
    differ = {key: value for key, value in ours.items() if chosen.get(key) != value}
    verdict = (
        "fedrl's defaults for this family are that setting"
        if not differ
        else f"**fedrl's defaults for this family differ from that setting** in {differ}"
    )
    print(f"{family}: best {best.label}; {verdict}")
    table = markdown(summaries)
    print(table)
    settings_list = "\n".join(
        f"- {name}: " + (", ".join(f"`{k}: {v}`" for k, v in learner.items() if k != "name") or "nothing changed")
        for name, learner in settings.items()
    )
    parts = [
        f"## Defaults per environment family: {family}",
        f"`{COMMAND} --only {family}` ({where()})",
        f"10 clients at heterogeneity 1, FedAvg, 2,048 env steps per client per round, at most {rounds} rounds "
        f"({rounds * 2048 * 10:,} env steps), seeds {list(SEEDS)}; target {target:g}, confirmed on 20 episodes per "
        "client. Each row a learner setting over the learner's own defaults (the first row: those defaults "
        "alone), reported as `fedrl compare` reports it (IQM with a 95 % bootstrap interval); the curves carry that "
        "interval as a band. The best setting (most seeds solved, then the highest IQM) is the learner "
        "default fedrl takes on this family when an experiment leaves the learner unset (`fedrl envs` lists it).",
        table,
        settings_list,
        f"Best: {best.label}; {verdict}.",
        f"![{family}](img/{image})",
    ]
    if family == "mountaincar":
        parts.insert(5, mountaincar_references())
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(GRIDS), action="append", help="sweep only this family (repeatable)")
    args = parser.parse_args()
    for family in args.only or list(GRIDS):
        with tempfile.TemporaryDirectory() as tmp:
            write_section(f"family-defaults-{family}", sweep(family, Path(tmp)))


if __name__ == "__main__":
    main()
