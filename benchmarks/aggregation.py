"""How fast a round's updates are screened and averaged, against the memory-bandwidth ceiling.

N updates of D float32 parameters (100 x 1M by default: 400 MB). What is timed, each the median of
REPEATS, in GB/s of update data read:

- the whole synchronous path of a FedAvg round (``experiment.aggregation.aggregate_round``: the
  strategy on the well-formed updates, whose candidate, finite, shows that none held a NaN or an
  Inf), on updates in one buffer (a round as the server reads it from its store, or a shard's plain
  updates in the simulator, rows of one array) and on
  updates that are separate arrays (decoded compressed updates, or a round over several shards; stacked:
  copied);
- the same round when one update holds a NaN: the candidate is not finite, so the round is
  screened (NaN and Inf in every update) and aggregated again;
- its parts: the screen alone, stacking separate updates, the weighted mean of a ready stack (one
  BLAS matrix-vector product);
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
from fedrl.core.update import Update, stack_deltas, step_weights
from fedrl.experiment.aggregation import aggregate_round
from fedrl.experiment.loading import parse_config
from fedrl.experiment.setup import Setup

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
    requested, width = (
        args.dim,
        int(np.sqrt(args.dim / 2)),
    )  # CartPole's actor and critic of two such layers: about dim parameters
    config = {"learner": {"hidden": [width, width]}, "federation": {"n_clients": args.n, "local_steps": 1500}}
    setup = Setup(parse_config(config))
    args.dim = setup.net.spec.dim
    rng = np.random.default_rng(0)
    buffer = rng.normal(0, 0.01, (args.n, args.dim)).astype(np.float32)
    steps = rng.integers(500, 1500, args.n)
    in_buffer = [Update(i, 0, buffer[i], int(steps[i])) for i in range(args.n)]
    updates = [Update(i, 0, buffer[i].copy(), int(steps[i])) for i in range(args.n)]
    poisoned_buffer = buffer.copy()
    poisoned_buffer[args.n // 2, 7] = np.nan
    poisoned = [Update(i, 0, poisoned_buffer[i], int(steps[i])) for i in range(args.n)]
    params = np.zeros(args.dim, dtype=np.float32)
    state = setup.strategy.init(params)
    stack = stack_deltas(updates)
    weights = step_weights(updates)
    ones = np.ones(args.dim, dtype=np.float32)

    def round_of(given: list[Update]):
        return lambda: aggregate_round(setup, state, params, 0, 1, given)

    parts = {
        "a FedAvg round, updates in one buffer (the server's round, a simulated shard's)": round_of(in_buffer),
        "a FedAvg round, updates in separate arrays, stacked (decoded ones)": round_of(updates),
        "a FedAvg round with a NaN update (screened, then aggregated again)": round_of(poisoned),
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
        f"## Aggregation speed\n\n`{COMMAND} --n {args.n} --dim {requested}` ({machine()})\n\n"
        f"{args.n} updates of {args.dim:,} float32 parameters ({gigabytes:.1f} GB: CartPole's actor and critic "
        f"with two hidden layers of {width}), median of {REPEATS}. The screen "
        "checks each update for NaN and Inf with one BLAS dot product against zeros (a NaN or Inf makes it NaN), and "
        "counts them only in an update that fails. A round with the weighted mean does not screen first: every "
        "positive weight carries a NaN or an Inf into the candidate, so a finite candidate shows there was none, and "
        "only a non-finite one sends the round through the screen and the strategy again (the same candidate bit for "
        "bit, tested). The server reads a round's update files into one buffer, and a simulated shard's plain updates"
        " are rows of one array, so either stack is a view of them, not a copy; decoded (compressed) updates and a "
        "round over several shards are separate arrays, which are stacked. The process tunes glibc's "
        "allocator as `fedrl run` and `fedrl server` do, so a stack of separate updates reuses freed memory instead "
        "of faulting in fresh pages. A streaming sum, one update at a time, would round differently from the one BLAS"
        " product (summing blocks of columns apart already does) and change every published result, so it is not "
        "done.\n\n"
        f"{table}\n"
    )
    print(table)
    write_section("aggregation", body)


if __name__ == "__main__":
    main()
