"""Throughput: env steps per second of federated PPO (64x64 actor and critic) on CartPole.

For 1, 10, 100 and 1000 clients: the rate with learning (rollouts + 4 PPO epochs +
aggregation; evaluation excluded), the acting rate (the actor's forward pass, sampling and the
batched envs' step, nothing kept: the peer's "rollout only") and the rollout rate (what a learner
collects: the critic's values, log-probabilities and the whole trajectory kept), to show where the
time goes. In the same run, the reference: single-agent
Stable-Baselines3 PPO on CartPole-v1 (benchmarks/sb3_reference.py), so the ratio is printed.
And start-up, as its own line: `fedrl run examples/cartpole.yaml` for one round, launched as a user
launches it, timed to its first output (the run set up, before the first round) and to the end of
its first round, median of STARTUP_RUNS launches.

    python benchmarks/throughput.py            # needs the bench extra: pip install -e '.[bench]'
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from _report import IMG, ROOT, machine, markdown_table, write_section

from fedrl.agents import distributions
from fedrl.agents.rollout import collect, env_action
from fedrl.agents.runtime import tune_allocator
from fedrl.envs.base import step
from fedrl.experiment.loading import parse_config
from fedrl.sim.clients import train_clients
from fedrl.sim.engine import initial_state
from fedrl.sim.setup import SimSetup
from fedrl.sim.state import aggregate

COMMAND = "python benchmarks/throughput.py"
LOCAL_STEPS = 1024  # per client per round: 16 envs x 64 steps, one rollout, 4 epochs of 4 minibatches
MIN_STEPS = 400_000  # measure at least this many env steps per setting
STARTUP_RUNS = 5
REPEATS = 3  # each rate is the median of this many measurements: the machine is shared and noisy
# The strongest peer, as measured on a machine of this kind (not rerun here: JAX is no dependency of
# fedrl): a PureJaxRL-style federated PPO, JAX 0.10 on CPU, gymnax CartPole with per-client physics as a
# vmap axis, one jitted function per round, the same network, local work and minibatches. Clients ->
# (env steps/s with learning, acting only, rollout kept for learning); None where it was not measured.
# Its kept rollout measured 1.9-2.4M at 100 clients: the best figure is the one to beat.
PEER = {10: (324_000, None, None), 100: (331_000, 3_200_000, 2_400_000), 1000: (None, 4_600_000, 2_600_000)}
COLUMNS = ("with learning (PPO, 4 epochs)", "acting only", "rollout kept for learning")


def setup_for(n_clients: int) -> SimSetup:
    """The benchmark's config for a fleet of ``n_clients``."""
    return SimSetup(
        parse_config(
            {
                "learner": {"name": "ppo", "n_envs": 16, "n_steps": 64, "epochs": 4, "minibatches": 4},
                "federation": {"n_clients": n_clients, "local_steps": LOCAL_STEPS, "shard_size": 250},
            }
        )
    )


def learning_rate(setup: SimSetup) -> float:
    """Env steps/s of whole training rounds (all shards, screening, aggregation), after a warm-up round."""
    state = initial_state(setup)
    clients = np.arange(setup.config.federation.n_clients)
    rounds = max(2, MIN_STEPS // (len(clients) * LOCAL_STEPS))
    for r in range(rounds + 1):
        if r == 1:
            start, steps = time.perf_counter(), 0
        received, state, _ = train_clients(setup, state, clients, (99, r))
        updates = [sent.update for sent in received]
        state, _, _ = aggregate(setup, state, updates, r)
        if r >= 1:
            steps += sum(u.env_steps for u in updates)
    return steps / (time.perf_counter() - start)


def rollout_rate(setup: SimSetup) -> float:
    """Env steps/s of acting only: the batched policy drives the batched envs, nothing learns."""
    state = initial_state(setup)
    n = setup.config.federation.n_clients
    flat = torch.from_numpy(state.params).expand(n, -1)
    n_steps = max(64, MIN_STEPS // (n * 16))
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    collect(setup.net, flat, setup.family, setup.env_params, state.env_state, 8, 0.99, gen, rng)
    start = time.perf_counter()
    collect(setup.net, flat, setup.family, setup.env_params, state.env_state, n_steps, 0.99, gen, rng)
    return n * 16 * n_steps / (time.perf_counter() - start)


@torch.inference_mode()
def acting_rate(setup: SimSetup) -> float:
    """Env steps/s of acting alone, the peer's "rollout only": each client's actor on its 16 envs'
    observations, an action sampled, the envs stepped; nothing kept, no critic."""
    state = initial_state(setup)
    n, net, family, env_params = setup.config.federation.n_clients, setup.net, setup.family, setup.env_params
    w = net.unpack(torch.from_numpy(state.params).expand(n, -1))
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    envs, obs = state.env_state, family.observe(env_params, state.env_state.physics)

    def act(steps: int) -> None:
        nonlocal envs, obs
        for _ in range(steps):
            action = distributions.sample(net.policy(w, torch.from_numpy(obs)), gen)
            res = step(family, env_params, envs, env_action(family, env_params, action), rng)
            envs, obs = res.state, res.obs

    act(8)
    n_steps = max(64, MIN_STEPS // (n * 16))
    start = time.perf_counter()
    act(n_steps)
    return n * 16 * n_steps / (time.perf_counter() - start)


def median_of(rate: Callable[[SimSetup], float], setup: SimSetup) -> float:
    """The median of ``REPEATS`` measurements of ``rate``."""
    return float(np.median([rate(setup) for _ in range(REPEATS)]))


def sb3_rate() -> float:
    """The reference's training steps/s, from its own process."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/sb3_reference.py"), "throughput", "--steps", "16384"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["steps_per_s"]


def startup_s() -> tuple[float, float]:
    """Median seconds from launching ``fedrl run`` to its first line (``run directory: ...``: set up,
    before the first round) and to the end of its first round (``round 1/1 ...``)."""
    ready, first = [], []
    for i in range(STARTUP_RUNS):
        out = ROOT / "bench-results" / f"startup-{i}"
        shutil.rmtree(out, ignore_errors=True)
        config = str(ROOT / "examples" / "cartpole.yaml")
        command = [sys.executable, "-m", "fedrl.cli", "run", config, "--out", str(out), "--set", "federation.rounds=1"]
        command.append("--no-tensorboard")
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        for line in process.stdout:
            if line.startswith("run directory:"):
                ready.append(time.perf_counter() - started)
            if line.startswith("round 1/1"):
                first.append(time.perf_counter() - started)
        process.wait()
    return float(np.median(ready)), float(np.median(first))


def _peer(n: int, column: int) -> str:
    """The peer's figure for ``n`` clients (a column of ``COLUMNS``), or "-"."""
    figure = PEER.get(n, (None,) * len(COLUMNS))[column]
    return "-" if figure is None else f"{figure:,.0f}"


def plot(rows: list[tuple[int, float, float, float]], sb3: float) -> None:
    """Bars per fleet size and figure, log scale, the peer's figures as red marks, the reference as a line."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x, width = np.arange(len(rows)), 0.27
    offsets = [(k - 1) * width for k in range(len(COLUMNS))]
    for k, (label, offset) in enumerate(zip(COLUMNS, offsets)):
        ax.bar(x + offset, [r[k + 1] for r in rows], width, label=label)
    ax.axhline(sb3, color="black", linestyle="--", label=f"SB3 PPO, 1 agent ({sb3:,.0f}/s)")
    for i, (n, *_) in enumerate(rows):
        for offset, figure in zip(offsets, PEER.get(n, (None,) * len(COLUMNS))):
            if figure is not None:
                ax.plot([i + offset - width / 2, i + offset + width / 2], [figure] * 2, color="red", lw=2)
    ax.plot([], [], color="red", lw=2, label="JAX/XLA peer (same setting)")
    ax.set_xticks(x, [f"{r[0]} clients" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("env steps / s")
    ax.set_title("fedrl throughput on CartPole, 64x64 actor-critic")
    ax.legend(fontsize=8)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "throughput.png", dpi=110)


def main() -> None:
    tune_allocator()
    rows = []
    for n in (1, 10, 100, 1000):
        setup = setup_for(n)
        rows.append((n, *(median_of(rate, setup) for rate in (learning_rate, acting_rate, rollout_rate))))
        print(
            f"{n:5d} clients: {rows[-1][1]:>10,.0f} steps/s with learning, {rows[-1][2]:>12,.0f} acting only, "
            f"{rows[-1][3]:>12,.0f} rollout kept",
            flush=True,
        )
    sb3 = sb3_rate()
    ready, first = startup_s()
    print(f"start-up: {ready:.2f} s to the run set up, {first:.2f} s to the end of the first round", flush=True)
    plot(rows, sb3)
    table = markdown_table(
        ["clients", "env steps/s with learning", "JAX/XLA peer", "acting only", "JAX/XLA peer",
         "rollout kept for learning", "JAX/XLA peer", "learning vs SB3 PPO"],
        [[n, f"{learn:,.0f}", _peer(n, 0), f"{act:,.0f}", _peer(n, 1), f"{roll:,.0f}", _peer(n, 2),
          f"{learn / sb3:.0f}x"] for n, learn, act, roll in rows],
    )  # fmt: skip
    body = "\n\n".join(
        [
            f"## Throughput\n\n`{COMMAND}` ({machine()})",
            "PPO, 16 envs x 64 steps per client per round (1,024), 4 epochs of 4 minibatches of 256 samples per "
            "client, 64x64 tanh actor and critic, shards of up to 250 clients; evaluation excluded; each figure "
            f"the median of {REPEATS} measurements. The JAX/XLA "
            "peer's figures were measured on a machine of this kind with the same setting (a PureJaxRL-style "
            "federated PPO, one jitted function per round; JAX is no dependency of fedrl, so they are not rerun "
            "here). Acting only: each client's actor on its envs' observations, an action sampled, the envs "
            "stepped, nothing kept (the peer's 'rollout only'); rollout kept for learning: what a learner "
            "collects (`fedrl.agents.rollout.collect`: the critic's values and log-probabilities too, the whole "
            "trajectory kept; the peer measured 1.9-2.4M at 100 clients, the best shown). Target: ahead of the "
            "peer in every row (>= 330,000 env steps/s with learning at 100 clients, >= 3.3M acting only at 100 "
            "and 4.6M at 1,000).",
            table,
            f"Reference in the same run: single-agent SB3 PPO on CartPole-v1 trains at **{sb3:,.0f} env steps/s**.",
            f"Start-up, launch of `fedrl run examples/cartpole.yaml --set federation.rounds=1` to its first line "
            f"(imports, config, set-up: the first round begins): **{ready:.2f} s**; to the end of its first round "
            f"(10 clients, 1,024 steps each, evaluation included): **{first:.2f} s** "
            f"(median of {STARTUP_RUNS} launches; target <= 1 s to the first round).",
            "![throughput](img/throughput.png)",
        ]
    )
    print(body)
    write_section("throughput", body)


if __name__ == "__main__":
    main()
