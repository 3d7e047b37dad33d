"""Round latency: how fast `fedrl server` turns a round of 10 clients with a tiny model.

A real `fedrl server` process on loopback (synchronous FedAvg, 10 clients, a PPO model with hidden
layers 8x8, no evaluation gate, every acknowledgement fsynced) and 10 clients in this process
(grpc.aio, one channel each) that answer at once: GetTask, PullModel of the task's version,
PushUpdate of a ready delta, and again. What is measured is the server and the protocol, not
training. From the server's own record (its rounds table): seconds from a round's opening to its
close, and from one close to the next (the period, which includes the clients hearing of the new
round), over ROUNDS rounds after WARMUP. Beside it, in the same run, the server with long polling off
(`rounds.long_poll_s: 0`): clients told to wait ask again after `rounds.retry_s`.

    python benchmarks/round_latency.py          # about a minute
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml
from _report import ROOT, machine, markdown_table, write_section
from load import SERVICE, Calls, add_clients, make_payloads, stop_server, update_header, wait_for_info

from fedrl.experiment.loading import parse_config
from fedrl.experiment.setup import Setup
from fedrl.wire import fedrl_pb2 as pb

COMMAND = "python benchmarks/round_latency.py"
CLIENTS = 10
HIDDEN = [8, 8]
WARMUP, ROUNDS = 5, 100
TARGET_MS = 50.0
SETTINGS = {"long polling (default)": {}, "long polling off": {"rounds": {"long_poll_s": 0.0}}}


def server_config(extra: dict) -> dict:
    """Synchronous FedAvg over CLIENTS clients, no gate; ``extra`` sections merged in."""
    config = {
        "experiment": {
            "learner": {"name": "ppo", "hidden": HIDDEN},
            "federation": {"n_clients": CLIENTS, "rounds": 10**6, "local_steps": 1024, "stop_at_target": False},
        },
        "gate": {"enabled": False},
        "store": {"durability": "fsync"},
        "limits": {"rate_per_s": 1000.0, "burst": 1000},  # 3 calls a round, many rounds a second
    }
    for section, values in extra.items():
        config[section] = {**config.get(section, {}), **values}
    return config


async def client(channel: grpc.aio.Channel, name: str, token: str, payload, stop: asyncio.Event) -> None:
    """Register, then GetTask -> PullModel -> PushUpdate until ``stop``; waits as told."""
    calls, metadata = Calls(channel), (("authorization", f"Bearer {token}"),)
    pull = channel.unary_stream(f"/{SERVICE}/PullModel")
    await calls.register(pb.RegisterRequest(client=name).SerializeToString(), metadata=metadata)
    n = 0
    while not stop.is_set():
        parts = [pb.TaskPart.FromString(p) async for p in calls.get_task(b"", metadata=metadata)]
        task = parts[0].header
        if task.WhichOneof("kind") == "wait":
            if task.wait.finished:
                return
            await asyncio.sleep(task.wait.retry_after_s)
            continue
        request = pb.PullRequest(version=task.train.base_version).SerializeToString()
        _ = [part async for part in pull(request, metadata=metadata)]
        await calls.push(iter([update_header(name, n, task.train, payload), *payload.chunks]), metadata=metadata)
        n += 1


async def drive(port: int, tokens: dict[str, str], payloads, state: Path) -> None:
    """Run the clients until WARMUP + ROUNDS rounds have closed."""
    stop = asyncio.Event()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in tokens]
    tasks = [
        asyncio.create_task(client(ch, name, token, payloads[i % len(payloads)], stop))
        for i, (ch, (name, token)) in enumerate(zip(channels, tokens.items()))
    ]
    db = sqlite3.connect(f"file:{state / 'server.db'}?mode=ro", uri=True)
    try:
        while closed(db) < WARMUP + ROUNDS + 1:
            if any(t.done() for t in tasks):
                for t in tasks:
                    if t.done():
                        t.result()  # a client that failed raises here
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        db.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()


def closed(db: sqlite3.Connection) -> int:
    """Rounds the server has closed so far."""
    return db.execute("SELECT COUNT(*) FROM rounds WHERE closed_at IS NOT NULL").fetchone()[0]


def run(extra: dict) -> dict:
    """One server and its clients; seconds from open to close and close to close, per round after WARMUP."""
    dim = Setup(parse_config(server_config({})["experiment"])).net.spec.dim
    payloads = make_payloads(dim)
    with tempfile.TemporaryDirectory(prefix="fedrl-latency-") as tmp:
        folder, state = Path(tmp), Path(tmp) / "state"
        tokens = add_clients(state, CLIENTS)
        config = folder / "server.yaml"
        config.write_text(yaml.safe_dump(server_config(extra)))
        log = folder / "server.log"
        command = [sys.executable, "-m", "fedrl.cli", "server", "--config", str(config), "--state-dir", str(state)]
        command += ["--listen", "127.0.0.1:0", "--insecure"]
        with open(log, "w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        try:
            info = wait_for_info(proc, state / "server.json", log)
            started = time.perf_counter()
            asyncio.run(drive(info["port"], tokens, payloads, state))
            elapsed = time.perf_counter() - started
        finally:
            stop_server(proc)
        with sqlite3.connect(state / "server.db") as db:
            rows = db.execute(
                "SELECT opened_at, closed_at FROM rounds WHERE closed_at IS NOT NULL ORDER BY round"
            ).fetchall()
    rows = rows[WARMUP : WARMUP + ROUNDS + 1]
    durations = [1000 * (c - o) for o, c in rows[1:]]
    periods = [1000 * (b[1] - a[1]) for a, b in itertools.pairwise(rows)]
    return {"dim": dim, "durations": durations, "periods": periods, "elapsed": elapsed}


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.1f} / {ordered[int(0.9 * (len(ordered) - 1))]:.1f}"


def main() -> None:
    results = {name: run(extra) for name, extra in SETTINGS.items()}
    rows = []
    for name, r in results.items():
        rows.append([name, _ms(r["durations"]), _ms(r["periods"]), f"{1000 / statistics.median(r['periods']):.1f}"])
        print(name, rows[-1], flush=True)
    table = markdown_table(
        ["server", "open to close, ms (median / p90)", "close to close, ms (median / p90)", "rounds/s"], rows
    )
    period = statistics.median(results["long polling (default)"]["periods"])
    verdict = "met" if period <= TARGET_MS else "not met"
    dim = results["long polling (default)"]["dim"]
    body = (
        f"## Round latency: 10 clients, a tiny model\n\n`{COMMAND}` ({machine()})\n\n"
        f"`fedrl server` in its own process (synchronous FedAvg, {CLIENTS} clients, PPO with hidden layers "
        f"{HIDDEN[0]}x{HIDDEN[1]}: {dim} parameters, no evaluation gate, every acknowledgement fsynced) and "
        f"{CLIENTS} clients in the benchmark's process that answer at once (GetTask, PullModel, PushUpdate of a "
        f"ready delta; no training; the per-client rate limit raised to 1,000 calls/s, as such rounds need). "
        f"From the server's rounds table, over {ROUNDS} rounds after {WARMUP}: a round's "
        "opening to its close, and one close to the next (the whole cycle, clients hearing of the new round "
        "included). Long polling (`rounds.long_poll_s`, 5 s): a client told to wait for the next round is held and "
        "answered when it opens; an arrival that completes a round wakes the server's loop at once. Off: clients "
        "ask again after `rounds.retry_s` (1 s).\n\n"
        f"{table}\n\nTarget: a 10-client round of a tiny model in <= {TARGET_MS:.0f} ms: {period:.1f} ms a round, "
        f"**{verdict}**.\n"
    )
    write_section("round-latency", body)


if __name__ == "__main__":
    main()
