"""The learned air-quality policy against the hand-written one (``fedrl.envs.airquality.hand_policy``).

Takes a run directory of examples/airquality.yaml (or any airquality run) and plays its final
policy and the hand policy on the same sites from the same reset seeds: the run's training sites,
its held-out sites and the standard site, EPISODES two-day episodes each. The learned policy acts as
the run evaluates it (``eval.greedy``). Prints the table and writes it to the benchmark report.

    fedrl run examples/airquality.yaml --out runs/airquality
    python benchmarks/airquality_hand.py runs/airquality
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _report import machine, markdown_table, write_section

from fedrl.agents import evaluate
from fedrl.agents.normalize import obs_scale
from fedrl.agents.runtime import threads
from fedrl.envs.airquality import hand_policy
from fedrl.envs.base import EnvFamily, reset, step
from fedrl.sim.run import open_run

EPISODES = 64
SEED = 2024
HELDOUT = 20


def hand_returns(family: EnvFamily, env_params: np.ndarray, episodes: int, seed: int) -> np.ndarray:
    """Returns ``(C, episodes)`` of the hand policy, played as ``fedrl.agents.evaluate`` plays one."""
    return play(family, env_params, episodes, seed, hand_policy)


def play(family: EnvFamily, env_params: np.ndarray, episodes: int, seed: int, act: Callable) -> np.ndarray:
    """Returns ``(C, episodes)`` of ``act`` (observations to actions), one episode per environment."""
    rng = np.random.default_rng(seed)
    state, obs = reset(family, env_params, episodes, rng)
    returns = np.zeros((env_params.shape[0], episodes))
    running = np.ones_like(returns, dtype=bool)
    while running.any():
        res = step(family, env_params, state, act(obs), rng)
        returns += res.reward * running
        running &= ~(res.terminated | res.truncated)
        state, obs = res.state, res.obs
    return returns


def main(run_dir: Path) -> None:
    run = open_run(run_dir)
    setup = run.setup
    if setup.family.name != "airquality":
        raise SystemExit(f"{run_dir}: an {setup.family.name} run; this compares airquality runs with the hand policy")
    params = run.dir.load_policy(setup) if (run.dir.path / "final_policy.safetensors").exists() else run.state.params
    sites = {  # name: (physics, whether they trained: with personal statistics they act with their own)
        f"the {setup.config.federation.n_clients} training sites": (setup.env_params, True),
        f"{HELDOUT} held-out sites": (setup.heldout_params(HELDOUT), False),
        "the standard site": (setup.family.standard_params[None], False),
    }
    rows = []
    for name, (env_params, trained) in sites.items():
        norm = run.state.norm
        if norm is not None:  # the final policy's statistics; personal ones: each site's own, pooled for new ones
            norm = norm.acting() if trained else norm.pooled()
        with threads(setup.config.threads):  # the run's own count: its numbers on any machine
            scale = obs_scale(setup.config.learner.normalize, norm)
            greedy = setup.config.eval.greedy
            learned = evaluate(setup.net, params, setup.family, env_params, EPISODES, SEED, greedy, scale)
        hand = hand_returns(setup.family, env_params, EPISODES, SEED)
        per_site_learned, per_site_hand = learned.mean(1), hand.mean(1)
        rows.append(
            [
                name,
                f"{per_site_learned.mean():.2f} (worst {per_site_learned.min():.2f})",
                f"{per_site_hand.mean():.2f} (worst {per_site_hand.min():.2f})",
                f"{100 * per_site_learned.mean() / per_site_hand.mean():.0f} %",
                f"{int((per_site_learned > per_site_hand).sum())} of {len(env_params)}",
            ]
        )
    table = markdown_table(["sites", "learned", "hand policy", "learned / hand", "learned ahead at"], rows)
    print(table)
    body = (
        f"`python benchmarks/airquality_hand.py {run_dir}` ({machine()})\n\n"
        f"The final policy of `{run_dir}` (round {run.state.round}, {run.state.env_steps:,} env steps, "
        f"{'greedy' if setup.config.eval.greedy else 'sampled'} actions; learner.normalize: "
        f"{setup.config.learner.normalize.model_dump()}) against `airquality.hand_policy`, on the "
        f"same sites from the same reset seeds, {EPISODES} two-day episodes per site.\n\n{table}\n"
    )
    write_section("airquality-hand", "## Air quality: the learned policy against the hand policy\n\n" + body)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
