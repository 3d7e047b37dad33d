"""Throughput: env steps per second of federated PPO (64x64 actor and critic) on CartPole.

For 1, 10, 100 and 1000 clients: the rate with learning (rollouts + 4 PPO epochs +
aggregation; evaluation excluded), the acting rate (the actor's forward pass, sampling and the
batched envs' step, nothing kept: the peer's "rollout only") and the rollout rate (what a learner
collects: the critic's values, log-probabilities and the whole trajectory kept), to show where the
time goes. In the same run, two references: single-agent Stable-Baselines3 PPO on CartPole-v1
(benchmarks/sb3_reference.py), and the JAX/XLA peer (benchmarks/jax_peer.py, the same setting as a
PureJaxRL-style program: one jitted function per round), each figure of it measured right after
fedrl's, in its own process, so the ratios compare the two on the same machine in the same minutes.
And start-up, as its own line: `fedrl run examples/cartpole.yaml` for one round, launched as a user
launches it, timed to its first output (the run set up, before the first round) and to the end of
its first round, median of STARTUP_RUNS launches, beside a process that only imports torch (timed,
like fedrl's, to the line it prints) and the peer's launch to its first round compiled.

    python benchmarks/throughput.py            # needs the bench extra: pip install -e '.[bench]'

Without JAX installed the peer is not measured: its columns show "-" (the bench extra installs JAX).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

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
COLUMNS = ("with learning (PPO, 4 epochs)", "acting only", "rollout kept for learning")
PEER_MODES = ("learn", "act", "rollout")  # benchmarks/jax_peer.py's name of each column


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


def peer_installed() -> bool:
    """Whether the JAX/XLA peer can run here (JAX comes with the bench extra)."""
    return importlib.util.find_spec("jax") is not None


def _peer_record(*args: str) -> dict:
    """The JSON record ``benchmarks/jax_peer.py`` prints last, run in its own process."""
    command = [sys.executable, str(ROOT / "benchmarks" / "jax_peer.py"), *args]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peer_rate(column: int, n_clients: int) -> float:
    """The peer's env steps/s for a column of ``COLUMNS``: the median of ``REPEATS`` measurements of at
    least ``MIN_STEPS`` env steps after a warm-up, as fedrl's. (Its setting mirrors ``setup_for`` and
    ``LOCAL_STEPS``: a change there must be made in benchmarks/jax_peer.py too.)"""
    mode, steps = PEER_MODES[column], str(MIN_STEPS)
    record = _peer_record("--mode", mode, "--clients", str(n_clients), "--repeats", str(REPEATS), "--min-steps", steps)
    return record["steps_per_s"]


def peer_startup_s() -> tuple[float, float]:
    """Median seconds from launching the peer (10 clients) to its first round compiled, and to its end."""
    records = [_peer_record("--mode", "startup", "--clients", "10", "--t0", repr(time.time())) for _ in range(3)]
    return tuple(float(np.median([r[key] for r in records])) for key in ("ready_s", "first_round_s"))


def torch_import_s() -> float:
    """Median seconds from launching a Python process that imports torch to the line it prints then
    (timed as ``startup_s`` times fedrl's: to a line, not to the process's exit)."""
    times = []
    for _ in range(STARTUP_RUNS):
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", "import torch; print('imported')"], stdout=subprocess.PIPE)
        process.stdout.readline()
        times.append(time.perf_counter() - started)
        process.wait()
    return float(np.median(times))


class Row(NamedTuple):
    """One fleet size: fedrl's three rates and the peer's (None where it was not measured)."""

    clients: int
    fedrl: tuple[float, float, float]
    peer: tuple[float | None, float | None, float | None]


def _cell(figure: float | None) -> str:
    return "-" if figure is None else f"{figure:,.0f}"


def _ratio(ours: float, theirs: float | None) -> str:
    return "-" if theirs is None else f"{ours / theirs:.2f}"


def plot(rows: list[Row], sb3: float, peer_label: str) -> None:
    """Bars per fleet size and figure, log scale, the peer's figures as red marks, the reference as a line."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x, width = np.arange(len(rows)), 0.27
    offsets = [(k - 1) * width for k in range(len(COLUMNS))]
    for k, (label, offset) in enumerate(zip(COLUMNS, offsets)):
        ax.bar(x + offset, [r.fedrl[k] for r in rows], width, label=f"fedrl: {label}")
    ax.axhline(sb3, color="black", linestyle="--", label=f"SB3 PPO, 1 agent ({sb3:,.0f}/s)")
    for i, row in enumerate(rows):
        for offset, figure in zip(offsets, row.peer):
            if figure is not None:
                ax.plot([i + offset - width / 2, i + offset + width / 2], [figure] * 2, color="red", lw=2)
    ax.plot([], [], color="red", lw=2, label=peer_label)
    ax.set_xticks(x, [f"{r.clients} clients" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("env steps / s")
    ax.set_title("fedrl throughput on CartPole, 64x64 actor-critic")
    ax.legend(fontsize=8)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "throughput.png", dpi=110)


def measure(n_clients: int, with_peer: bool) -> Row:
    """fedrl's three rates for a fleet, each followed by the peer's where it runs (else None)."""
    setup, ours, theirs = setup_for(n_clients), [], []
    for column, rate in enumerate((learning_rate, acting_rate, rollout_rate)):
        ours.append(median_of(rate, setup))
        theirs.append(peer_rate(column, n_clients) if with_peer else None)
    row = Row(n_clients, tuple(ours), tuple(theirs))
    print(
        f"{n_clients:5d} clients: "
        + ", ".join(f"{name} {_cell(a)} (peer {_cell(b)})" for name, a, b in zip(PEER_MODES, row.fedrl, row.peer)),
        flush=True,
    )
    return row


def targets(rows: list[Row], with_peer: bool) -> str:
    """The issue's bars (fixed figures, from the peer program it quoted) and, where the peer ran here,
    how many rows fedrl leads."""
    by_size = {r.clients: r.fedrl for r in rows}
    bars = [("with learning at 100 clients", by_size[100][0], 330_000),
            ("acting only at 100 clients", by_size[100][1], 3_300_000),
            ("acting only at 1,000 clients", by_size[1000][1], 4_600_000)]  # fmt: skip
    met = "; ".join(
        f"{name} {ours:,.0f} (>= {bar:,.0f}: {'met' if ours >= bar else 'not met'})" for name, ours, bar in bars
    )
    line = f"Targets, the issue's fixed figures (from the peer program it quoted, measured on another day): {met}."
    if with_peer:
        pairs = [(a, b) for r in rows for a, b in zip(r.fedrl, r.peer)]
        ahead = sum(a > b for a, b in pairs)
        line += f" Against the peer measured in this run: fedrl ahead in {ahead} of {len(pairs)} rows."
    return line


def main() -> None:
    tune_allocator()
    with_peer = peer_installed()
    rows = [measure(n, with_peer) for n in (1, 10, 100, 1000)]
    sb3 = sb3_rate()
    ready, first = startup_s()
    torch_s = torch_import_s()
    peer_ready, peer_first = peer_startup_s() if with_peer else (None, None)
    print(f"start-up: {ready:.2f} s to the run set up, {first:.2f} s to the end of the first round", flush=True)
    peer_label = "JAX/XLA peer, this run" if with_peer else "JAX/XLA peer (not measured: no JAX here)"
    plot(rows, sb3, peer_label)
    header = ["clients", "figure", "fedrl, env steps/s", peer_label, "fedrl / peer", "learning vs SB3 PPO"]
    table = markdown_table(
        header,
        [[r.clients, name, _cell(ours), _cell(theirs), _ratio(ours, theirs), f"{ours / sb3:.0f}x" if k == 0 else ""]
         for r in rows for k, (name, ours, theirs) in enumerate(zip(COLUMNS, r.fedrl, r.peer))],
    )  # fmt: skip
    peer_how = (
        "The peer is `benchmarks/jax_peer.py`: the same setting written as a PureJaxRL-style program (JAX "
        f"{importlib.metadata.version('jax')} on "
        "the CPU, CartPole with each client's physics as a vmap axis, float32 physics where fedrl's are float64, "
        "one jitted function per round doing the rollouts, GAE, the 4 epochs of 4 minibatches and FedAvg), each "
        "figure measured in its own process right after fedrl's, median of the same number of measurements "
        "after a warm-up (its compilation excluded)."
        if with_peer
        else "JAX is not installed here, so the peer was not measured (install the bench extra to measure it in "
        "the same run)."
    )
    startup = (
        f"Start-up, launch of `fedrl run examples/cartpole.yaml --set federation.rounds=1` to its first line "
        f"(imports, config, set-up: the first round begins): **{ready:.2f} s**; to the end of its first round "
        f"(10 clients, 1,024 steps each, evaluation included): **{first:.2f} s** (median of {STARTUP_RUNS} "
        f"launches; target <= 1 s to the first round). A Python process that only imports torch prints its "
        f"first line {torch_s:.2f} s after launch here: the floor of any start-up that trains with torch."
    )
    if with_peer:
        startup += (
            f" The peer, launch to its first round compiled (10 clients): {peer_ready:.2f} s, to the end of "
            f"that round: {peer_first:.2f} s (median of 3 launches, XLA's compilation cache cold)."
        )
    body = "\n\n".join(
        [
            f"## Throughput\n\n`{COMMAND}` ({machine()})",
            "PPO, 16 envs x 64 steps per client per round (1,024), 4 epochs of 4 minibatches of 256 samples per "
            "client, 64x64 tanh actor and critic, shards of up to 250 clients; evaluation excluded; each figure "
            f"the median of {REPEATS} measurements. Acting only: each client's actor on its envs' observations, "
            "an action sampled, the envs stepped, nothing kept (the peer's 'rollout only'); rollout kept for "
            "learning: what a learner collects (`fedrl.agents.rollout.collect`: the critic's values and "
            "log-probabilities too, the whole trajectory kept). " + peer_how,
            table,
            targets(rows, with_peer),
            f"Reference in the same run: single-agent SB3 PPO on CartPole-v1 trains at **{sb3:,.0f} env steps/s**.",
            startup,
            "![throughput](img/throughput.png)",
        ]
    )
    print(body)
    write_section("throughput", body)


if __name__ == "__main__":
    main()
