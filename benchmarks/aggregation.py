"""How fast a round's updates are screened and averaged, against the memory-bandwidth ceiling.

N updates of D float32 parameters (100 x 1M by default: 400 MB). What is timed, each the median of
REPEATS, in GB/s of update data read:

- the whole synchronous path of a FedAvg round as the simulator and the server run it
  (``core.aggregation.screen``, then the strategy: its own screen, the stack, the weighted mean);
- its parts: the screen alone (NaN and Inf in every update), stacking the updates, the weighted mean
  of a ready stack (one BLAS matrix-vector product);
- the ceiling, in the same process: one BLAS pass reading the stack (a dot product per row).

    python benchmarks/aggregation.py [--n 100] [--dim 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _report import machine, markdown_table, write_section

from fedrl.agents.runtime import tune_allocator
from fedrl.core.aggregation import screen, weighted_mean
from fedrl.core.strategies import FedAvgConfig, make_strategy
from fedrl.core.update import Update, stack_deltas, step_weights

COMMAND = "python benchmarks/aggregation.py"
REPEATS = 7


def timed(work) -> float:
    """The median seconds of ``work()`` over REPEATS runs (after one warm-up)."""
    work()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--dim", type=int, default=1_000_000)
    args = parser.parse_args()
    tune_allocator()  # as a simulated run and the server do: a round's stack reuses freed memory
    rng = np.random.default_rng(0)
    updates = [
        Update(i, 0, rng.normal(0, 0.01, args.dim).astype(np.float32), int(rng.integers(500, 1500)))
        for i in range(args.n)
    ]
    params = np.zeros(args.dim, dtype=np.float32)
    strategy = make_strategy(FedAvgConfig())
    state = strategy.init(params)
    stack = stack_deltas(updates)
    weights = step_weights(updates)
    ones = np.ones(args.dim, dtype=np.float32)

    def round_path() -> None:
        strategy.aggregate(state, params, screen(updates, args.dim).accepted)

    parts = {
        "a FedAvg round: screen, the strategy's screen, stack, weighted mean": round_path,
        "screen (NaN and Inf in every update)": lambda: screen(updates, args.dim),
        "stack the updates": lambda: stack_deltas(updates),
        "weighted mean of a ready stack (BLAS)": lambda: weighted_mean(stack, weights),
        "ceiling: one BLAS pass over the stack": lambda: stack @ ones,
    }
    gigabytes = args.n * args.dim * 4 / 1e9
    rows = []
    for name, work in parts.items():
        seconds = timed(work)
        rows.append([name, f"{seconds * 1e3:,.1f} ms", f"{gigabytes / seconds:,.1f} GB/s"])
        print(rows[-1], flush=True)
    table = markdown_table(["what", "time", "update data per second"], rows)
    body = (
        f"## Aggregation speed\n\n`{COMMAND} --n {args.n} --dim {args.dim}` ({machine()})\n\n"
        f"{args.n} updates of {args.dim:,} float32 parameters ({gigabytes:.1f} GB), median of {REPEATS}. The screen "
        "checks each update for NaN and Inf with one BLAS dot product against zeros (a NaN or Inf makes it NaN), "
        "and counts them only in an update that fails. The process tunes glibc's allocator as `fedrl run` and `fedrl "
        "server` do, so a round's stack reuses freed memory instead of faulting in fresh pages (about 1.7x faster "
        "stacking). The weighted mean needs the stack: a streaming sum that never holds it would round differently "
        "and change every published result, so it is not done.\n\n"
        f"{table}\n"
    )
    print(table)
    write_section("aggregation", body)


if __name__ == "__main__":
    main()
