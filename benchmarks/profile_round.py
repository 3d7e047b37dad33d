"""Where one round's time goes: PPO at 100 clients, the throughput benchmark's setting.

One warm-up round, then one round under cProfile (which slows Python-heavy code more than torch
kernels: read the shares, not the absolute seconds), split into what a round does: rollouts (the
actor and critic forward passes, sampling, the environments' steps), GAE, the PPO loss (forward
passes of every minibatch), the backward passes, the optimiser's steps, aggregation and the global
policy's evaluation; "the rest" is Python between them. The round's wall time without the
profiler is measured beside it.

    python benchmarks/profile_round.py
"""

from __future__ import annotations

import cProfile
import pstats
import time

import numpy as np
from _report import machine, markdown_table, write_section
from throughput import LOCAL_STEPS, setup_for

from fedrl.agents.runtime import threads, tune_allocator
from fedrl.experiment.aggregation import client_returns
from fedrl.sim.clients import train_clients
from fedrl.sim.engine import initial_state
from fedrl.sim.state import aggregate

COMMAND = "python benchmarks/profile_round.py"
CLIENTS = 100
PHASES = {  # phase -> (file suffix, function) whose cumulative time it is
    "rollouts (actor + critic forward, sampling, env steps)": ("agents/rollout.py", "collect"),
    "GAE": ("agents/rollout.py", "gae"),
    "PPO loss: forward passes of the minibatches": ("agents/ppo.py", "_minibatch_loss"),
    "backward passes": ("torch/_tensor.py", "backward"),
    "optimiser steps (flat Adam)": ("agents/optim.py", "step"),
    "aggregation (screen, strategy)": ("sim/state.py", "aggregate"),
    "evaluation of the global policy": ("experiment/aggregation.py", "client_returns"),
}


def one_round(setup, state, round_: int):
    """Train every client, aggregate, evaluate: what one synchronous round of the engine does."""
    clients = np.arange(CLIENTS)
    received, state, _ = train_clients(setup, state, clients, (99, round_))
    state, _, _ = aggregate(setup, state, [sent.update for sent in received], round_)
    client_returns(setup, state.params)
    return state


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """The cumulative seconds of every function ``name`` defined in a file ending with ``suffix``."""
    return sum(row[3] for (path, _, function), row in stats.stats.items() if function == name and path.endswith(suffix))


def main() -> None:
    tune_allocator()
    setup = setup_for(CLIENTS)
    with threads(setup.config.threads):
        state = one_round(setup, initial_state(setup), 0)
        start = time.perf_counter()
        state = one_round(setup, state, 1)
        wall = time.perf_counter() - start
        profiler = cProfile.Profile()
        profiler.enable()
        profiled_start = time.perf_counter()
        one_round(setup, state, 2)
        profiled = time.perf_counter() - profiled_start
        profiler.disable()
    stats = pstats.Stats(profiler)
    rows, accounted = [], 0.0
    for phase, (suffix, name) in PHASES.items():
        seconds = cumulative(stats, suffix, name)
        accounted += seconds
        rows.append([phase, f"{seconds:.3f}", f"{100 * seconds / profiled:.0f} %"])
    rows.append(
        ["the rest (Python between them)", f"{profiled - accounted:.3f}", f"{100 * (1 - accounted / profiled):.0f} %"]
    )
    table = markdown_table(["phase", "seconds (profiled)", "share"], rows)
    steps = CLIENTS * LOCAL_STEPS
    print(table)
    print(f"round without the profiler: {wall:.3f} s, {steps / wall:,.0f} env steps/s")
    write_section(
        "profile",
        f"## Where a round's time goes\n\n`{COMMAND}` ({machine()})\n\n"
        f"One round of the throughput setting at {CLIENTS} clients (PPO, 16 envs x 64 steps per client, 4 epochs "
        f"of 4 minibatches, evaluation of all {CLIENTS} clients included), profiled by cProfile ({profiled:.2f} s "
        f"under it); the backward passes include the gradient of every minibatch. Without the profiler the "
        f"round took **{wall:.2f} s** ({steps / wall:,.0f} env steps/s, evaluation included).\n\n{table}\n",
    )


if __name__ == "__main__":
    main()
