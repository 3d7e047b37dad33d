"""Secure aggregation cost: time and bytes of one round for 10, 100 and 500 clients.

Each setting runs the whole protocol of ``fedrl.core.secagg`` (Bonawitz et al., CCS 2017) in
one process with ``secure_sum``: every client's key agreements, Shamir shares, sealed shares and
masked input, then the server's routing, reconstruction and unmasking. Updates have d = 10,000
float32 parameters (the default CartPole PPO policy, 64x64 actor and critic, has 9,155), the
threshold is the default 2/3 of the round's clients, and "10% dropouts" means that many clients
share their keys and then never send their masked input, so the server must rebuild their
pairwise keys. Bytes are the lengths of the serialized messages; seconds are wall time on one
core, for all clients added up (a fleet runs them in parallel) and for the server.

    python benchmarks/secagg.py
"""

from __future__ import annotations

import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _report import IMG, machine, markdown_table, write_section
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedrl.core.secagg import MASK_INFO, SecAggConfig, agree, expand, public_key, secure_sum, shamir_split

COMMAND = "python benchmarks/secagg.py"
D = 10_000
CLIENTS = (10, 100, 500)
DROPOUT = (0.0, 0.1)
REPEATS = {10: 5, 100: 3, 500: 1}  # the median of this many runs; one 500-client run takes about a minute
CONFIG = SecAggConfig()


def where() -> str:
    """The machine line: the protocol is single-threaded (torch plays no part)."""
    torch_threads = machine().split(", ")[1]
    return machine().replace(torch_threads, "one core (OpenSSL through cryptography, numpy)")


def measure(n: int, dropout: float) -> dict:
    """One setting: the median run's seconds, and its bytes (the same in every run)."""
    rng = np.random.default_rng(n)
    inputs = rng.normal(0.0, 0.05, (n, D)).astype(np.float32)
    dropped = np.zeros(n, dtype=bool)
    dropped[rng.choice(n, round(dropout * n), replace=False)] = True
    runs = []
    for seed in range(REPEATS[n]):
        start = time.perf_counter()
        result = secure_sum(inputs, dropped, CONFIG, np.random.default_rng(seed))
        runs.append((time.perf_counter() - start, result))
    wall, result = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    error = float(np.abs(result.sum - inputs[~dropped].sum(axis=0)).max())
    row = {
        "n": n,
        "dropout": dropout,
        "t": result.threshold,
        "survivors": result.n_survivors,
        "wall_s": wall,
        "client_ms": 1e3 * result.client_seconds / n,
        "server_s": result.server_seconds,
        "messages": result.messages,
        "up_kb": result.bytes_up / n / 1e3,
        "down_kb": result.bytes_down / n / 1e3,
        "total_mb": (result.bytes_up + result.bytes_down) / 1e6,
        "max_error": error,
    }
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def unit_costs() -> str:
    """What the totals are made of: one pairwise key, one mask expansion, one Shamir sharing at n = 500."""
    rng = np.random.default_rng(0)
    mine, theirs = X25519PrivateKey.from_private_bytes(rng.bytes(32)), public_key(rng.bytes(32))
    seed, xs, t = rng.bytes(32), list(range(1, 501)), CONFIG.threshold_for(500)

    def per_call_us(fn, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return 1e6 * (time.perf_counter() - start) / calls

    agree_us = per_call_us(lambda: agree(mine, theirs, MASK_INFO), 2000)
    prg_us = per_call_us(lambda: expand(seed, D), 2000)
    shamir_ms = per_call_us(lambda: shamir_split(seed, xs, t, rng.bytes), 10) / 1e3
    return (
        f"Unit costs on this machine: one X25519 agreement + HKDF {agree_us:.0f} µs; one ChaCha20 mask of "
        f"{D:,} words {prg_us:.0f} µs; one Shamir sharing of a 32-byte secret to 500 clients with t = {t} "
        f"{shamir_ms:.0f} ms (a client makes two)."
    )


def plot(rows: list[dict]) -> str:
    """Seconds (per client, server) and kilobytes per client against the number of clients."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for dropout, style in zip(DROPOUT, ("-", "--")):
        mine = [r for r in rows if r["dropout"] == dropout]
        ns, tag = [r["n"] for r in mine], f"{dropout:.0%} dropouts"
        left.plot(ns, [r["client_ms"] / 1e3 for r in mine], "o" + style, color="C0", label=f"per client, {tag}")
        left.plot(ns, [r["server_s"] for r in mine], "s" + style, color="C1", label=f"server, {tag}")
        right.plot(ns, [r["up_kb"] for r in mine], "o" + style, color="C0", label=f"up per client, {tag}")
        right.plot(ns, [r["down_kb"] for r in mine], "s" + style, color="C1", label=f"down per client, {tag}")
    right.axhline(4 * D / 1e3, color="grey", linewidth=1, label="plain float32 update")
    for ax, ylabel in ((left, "seconds per round"), (right, "kB per client per round")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients in the round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"Secure aggregation, d = {D:,}, t = 2/3 of the clients")
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "secagg.png", dpi=110)
    plt.close(fig)
    return "![Secure aggregation cost](img/secagg.png)"


def main() -> None:
    load_before = os.getloadavg()[0]
    rows = [measure(n, dropout) for n in CLIENTS for dropout in DROPOUT]
    load = (
        f"Load average over the last minute: {load_before:.1f} when the runs began, {os.getloadavg()[0]:.1f} when "
        f"they ended, on {os.cpu_count()} cores; work beyond this script shares the machine, so the seconds are "
        f"upper bounds and a single 500-client run is noisy. Bytes and messages do not depend on the load."
    )
    table = markdown_table(
        [
            "clients",
            "dropouts",
            "t",
            "in the sum",
            "wall s (all parties)",
            "client ms (each)",
            "server s",
            "messages",
            "kB up per client",
            "kB down per client",
            "MB on the wire",
            "max error vs float sum",
        ],
        [
            [
                r["n"],
                f"{r['dropout']:.0%}",
                r["t"],
                r["survivors"],
                f"{r['wall_s']:.2f}",
                f"{r['client_ms']:.1f}",
                f"{r['server_s']:.2f}",
                f"{r['messages']:,}",
                f"{r['up_kb']:,.1f}",
                f"{r['down_kb']:,.1f}",
                f"{r['total_mb']:,.1f}",
                f"{r['max_error']:.1e}",
            ]
            for r in rows
        ],
    )
    at_500 = next(r for r in rows if r["n"] == 500 and r["dropout"] == 0.0)
    body = "\n\n".join(
        [
            f"## Secure aggregation cost\n\n`{COMMAND}` ({where()})",
            f"One round of Bonawitz et al.'s protocol (`fedrl.core.secagg.secure_sum`, all clients in one process), "
            f"d = {D:,} float32 parameters, threshold t = ceil(2n/3), fixed point clip 1, scale 2^16; 10% dropouts "
            "leave "
            "after sharing their keys, so the server rebuilds their pairwise keys and their masks. Client time is "
            "each "
            f"client's own work, averaged over all n clients, dropped ones included (on a fleet they run in parallel); "
            f"bytes are the serialized messages, per client also averaged over all n. Median of {REPEATS[10]} runs "
            f"at 10 clients, {REPEATS[100]} at 100, {REPEATS[500]} at 500.",
            table,
            load,
            unit_costs(),
            f"Each client agrees 2(n - 1) X25519 keys, expands n ChaCha20 masks of d words and evaluates two Shamir "
            f"polynomials of degree t - 1 at n points, so its work grows as n^2 once t is a fraction of n. Its traffic "
            "grows as n on top of the 4 + 4d bytes of its masked input: per other client of the round it sends 90 "
            "bytes "
            f"(a sealed pair of shares) and 42 (a revealed share), and receives 68 (a roster entry), 90 and 4 (an id). "
            f"At 500 clients a client sends {at_500['up_kb']:,.0f} kB and receives {at_500['down_kb']:,.0f} kB per "
            "round "
            f"against {4 * D / 1e3:.0f} kB for a plain update. Dropouts add server work: one X25519 agreement and one "
            "mask "
            f"expansion per (dropped, survivor) pair. See docs/secure_aggregation.md.",
            plot(rows),
        ]
    )
    write_section("secure-aggregation", body)


if __name__ == "__main__":
    main()
