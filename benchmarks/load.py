"""Load: many simulated clients against ``fedrl server`` on loopback, with bare grpcio as the ceiling.

For models of about 10k, 100k and 1M parameters (CartPole PPO, hidden layers 67x67, 220x220,
704x704), one asyncio process plays N clients (default 1,000), each with its own token, sharing a
few gRPC channels. Each client registers once, heartbeats every ``rounds.heartbeat_s`` and loops
GetTask -> PushUpdate (a random float32 delta of the model's size with its sha256, the task's
base version, a fresh update id) with no pause: a closed loop, so the server is saturated and the
latency includes the queue (Little's law: p50 is about N / rate). The server runs asynchronous
FedBuff with no evaluation gate, under both store durabilities (``fsync``: every ack fsynced;
``process``: survives kill -9 of the server, not power loss). Figures: accepted updates/s over a
steady window, p50/p99 PushUpdate latency, failed calls by status code, peak server RSS (VmHWM),
CPU used by server, generator and the rest of the machine. The ceiling, measured in the same run
with the same generator: ``benchmarks/_echo_server.py``, grpcio's synchronous server with the same
thread count and options, answering every call without doing anything. Generator and server share
the machine's cores. A quick or partial run (``--quick``, ``--models``, ...) prints its table and
leaves docs/benchmarks.md alone.

    flock /tmp/fedrl-bench.lock python benchmarks/load.py           # full run, about 6 minutes
    flock /tmp/fedrl-bench.lock python benchmarks/load.py --quick   # smoke run; prints, writes nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _report import IMG, ROOT, machine, markdown_table, write_section

from fedrl.experiment.loading import parse_config
from fedrl.experiment.setup import Setup
from fedrl.server.config import LimitsConfig
from fedrl.server.store import Store
from fedrl.wire import codec, convert
from fedrl.wire import fedrl_pb2 as pb

COMMAND = "flock /tmp/fedrl-bench.lock python benchmarks/load.py"
SERVICE = "fedrl.v1.Federation"
MODELS = {"10k": (67, 67), "100k": (220, 220), "1M": (704, 704)}  # name -> PPO hidden layers
TARGET_CLIENTS, TARGET_RATE = 1000, 500  # the target: 1,000 clients, >= 500 accepted 100k-parameter updates/s
BUFFER_SIZE = 100  # FedBuff arrivals per new version
HEARTBEAT_S = 5.0
ENV_STEPS = 1024  # claimed by every update
CALL_TIMEOUT_S = 120.0
POOL = 4  # distinct random deltas per model, reused under fresh update ids
RSS_LIMIT_MB = 8000  # stop a run whose server grows past this, to spare the shared machine


@dataclass(frozen=True)
class Settings:
    """One benchmark run's shape."""

    clients: int
    channels: int
    warmup_s: float
    window_s: float
    models: tuple[str, ...]
    server_sets: tuple[str, ...] = ()  # `fedrl server --set` overrides, to try other server settings
    aio_echo: bool = True  # also measure a bare grpc.aio service (`_echo_server.py --aio`), fedrl's transport


@dataclass
class Tally:
    """What the generator saw: pushes acknowledged, their latencies in the window, failed calls by code."""

    window: tuple[float, float] = (float("inf"), float("inf"))
    started: float = field(default_factory=time.perf_counter)
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0  # acknowledged inside the window
    acked: int = 0  # acknowledged over the whole run
    errors: Counter = field(default_factory=Counter)  # (method, status code) -> calls
    details: dict = field(default_factory=dict)  # (method, status code) -> (first details, seconds into the run)
    stopping: bool = False

    def push_done(self, started: float, ended: float) -> None:
        self.acked += 1
        if self.window[0] <= ended <= self.window[1]:
            self.accepted += 1
            self.latencies.append(ended - started)


@dataclass(frozen=True)
class Payload:
    """A delta ready to send: its header and its chunk messages, serialized once."""

    header: pb.VectorHeader
    chunks: tuple[bytes, ...]


@dataclass(frozen=True)
class Window:
    """What one run measured besides the tally."""

    connect_s: float  # to register every client
    registered: int
    connected: int | None  # the server's own count at the window's end (fedrl_clients_connected)
    idle_rss_mb: float  # the server's resident memory once started, before any client connects
    peak_rss_mb: float
    server_cores: float
    server_kernel_cores: float  # the part of server_cores spent in the kernel (sockets, files, fsync)
    generator_cores: float
    other_cores: float  # everything else on the machine
    elapsed: float  # seconds the window lasted


@dataclass(frozen=True)
class Result:
    """The figures of one run."""

    model: str
    dim: int
    server: str  # "grpcio echo" or "fedrl"
    durability: str  # "-" for the echo server
    rate: float  # acknowledged updates/s in the window
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]  # "method CODE" -> failed calls
    window: Window
    stored: int | None  # update records in the server's database after the run; None for the echo server
    acked: int  # acknowledgements the clients received over the whole run
    log_problems: dict[str, int]  # warning and error events of the server's log
    details: dict  # (method, code) -> (first details, seconds into the run)


# --- the clients ---------------------------------------------------------------------------
class Calls:
    """The Federation methods on one channel, bytes in and bytes out (messages serialized here)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.register = channel.unary_unary(f"/{SERVICE}/Register")
        self.heartbeat = channel.unary_unary(f"/{SERVICE}/Heartbeat")
        self.get_task = channel.unary_stream(f"/{SERVICE}/GetTask")
        self.push = channel.stream_unary(f"/{SERVICE}/PushUpdate")


async def attempt(tally: Tally, method: str, call):
    """Await one call; a failure is counted by status code (unless the run is stopping) and gives None."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if not tally.stopping:
            key = (method, error.code().name)
            tally.errors[key] += 1
            tally.details.setdefault(key, (error.details(), time.perf_counter() - tally.started))
        return None


async def read_task(calls: Calls, metadata: tuple) -> pb.TaskHeader:
    """The task header of one GetTask stream (the stream is read to its end)."""
    parts = [part async for part in calls.get_task(b"", metadata=metadata, timeout=CALL_TIMEOUT_S)]
    return pb.TaskPart.FromString(parts[0]).header


def update_header(name: str, n: int, train: pb.Train, payload: Payload) -> bytes:
    header = pb.UpdateHeader(
        update_id=f"{name}-{n}",
        client=name,
        round=train.round,
        base_version=train.base_version,
        env_steps=ENV_STEPS,
        delta=payload.header,
    )
    return pb.UpdatePart(header=header).SerializeToString()


async def work(calls: Calls, name: str, metadata: tuple, payloads: list[Payload], tally: Tally) -> None:
    """GetTask -> PushUpdate, again and again, until the run stops."""
    n = random.randrange(len(payloads))
    while not tally.stopping:
        task = await attempt(tally, "GetTask", read_task(calls, metadata))
        if task is None or task.WhichOneof("kind") == "wait":
            await asyncio.sleep(0.1 if task is None else task.wait.retry_after_s)
            continue
        payload = payloads[n % len(payloads)]
        parts = [update_header(name, n, task.train, payload), *payload.chunks]
        started = time.perf_counter()
        if (
            await attempt(tally, "PushUpdate", calls.push(iter(parts), metadata=metadata, timeout=CALL_TIMEOUT_S))
            is None
        ):
            await asyncio.sleep(0.1)
        else:
            tally.push_done(started, time.perf_counter())
        n += 1


async def beat(calls: Calls, metadata: tuple, tally: Tally) -> None:
    """One heartbeat every HEARTBEAT_S, starting at a random phase."""
    request = pb.HeartbeatRequest(acting_version=0).SerializeToString()
    await asyncio.sleep(random.uniform(0, HEARTBEAT_S))
    while not tally.stopping:
        await attempt(tally, "Heartbeat", calls.heartbeat(request, metadata=metadata, timeout=CALL_TIMEOUT_S))
        await asyncio.sleep(HEARTBEAT_S)


async def register_all(calls: list[Calls], tokens: dict[str, str], tally: Tally) -> list[tuple[Calls, str, tuple]]:
    """Register every client (64 at a time); returns (calls, name, metadata) of those registered."""
    gate = asyncio.Semaphore(64)

    async def one(i: int, name: str, token: str):
        metadata = (("authorization", f"Bearer {token}"),)
        request = pb.RegisterRequest(client=name).SerializeToString()
        mine = calls[i % len(calls)]
        async with gate:
            reply = await attempt(tally, "Register", mine.register(request, metadata=metadata, timeout=CALL_TIMEOUT_S))
        return None if reply is None else (mine, name, metadata)

    done = await asyncio.gather(*(one(i, name, token) for i, (name, token) in enumerate(tokens.items())))
    return [d for d in done if d is not None]


# --- measuring the server process ----------------------------------------------------------------
def proc_kb(pid: int, key: str) -> float:
    """A ``/proc/PID/status`` field in kB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return 0.0


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (``None``: this one), all threads."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    return sum(_user_and_kernel_seconds(pid))


def _user_and_kernel_seconds(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of process ``pid``, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def watch_rss(pid: int, tally: Tally, peak: list[float]) -> None:
    """Sample the server's RSS; stop the run if it passes RSS_LIMIT_MB."""
    while not tally.stopping:
        peak[0] = max(peak[0], proc_kb(pid, "VmRSS") / 1024)
        if peak[0] > RSS_LIMIT_MB:
            print(f"  server RSS {peak[0]:,.0f} MB is past {RSS_LIMIT_MB:,} MB: stopping this run", flush=True)
            tally.window = (tally.window[0], min(tally.window[1], time.perf_counter()))
            tally.stopping = True
        await asyncio.sleep(0.25)


def scrape(metrics_port: int | None, name: str) -> float | None:
    """One unlabelled sample from the server's Prometheus endpoint."""
    if metrics_port is None:
        return None
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


# --- one run ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A started server: where it listens and how to read its numbers."""

    pid: int
    port: int
    metrics_port: int | None


def usage(pid: int) -> tuple[float, float, float, float, float]:
    """Now, and the CPU seconds of the server, of this process and of the whole machine so far, and the
    server's in the kernel."""
    kernel = _user_and_kernel_seconds(pid)[1]
    return time.perf_counter(), cpu_seconds(pid), cpu_seconds(), machine_busy_seconds(), kernel


async def measure_window(target: Target, tally: Tally, settings: Settings) -> tuple[tuple, tuple, int | None]:
    """Warm up, then open the tally's window for ``window_s``; CPU usage at both ends and the connected count."""
    await asyncio.sleep(settings.warmup_s)
    marks = usage(target.pid)
    tally.window = (marks[0], marks[0] + settings.window_s)
    await asyncio.sleep(settings.window_s)
    ends = usage(target.pid)
    connected = await asyncio.to_thread(scrape, target.metrics_port, "fedrl_clients_connected")
    tally.window = (tally.window[0], min(tally.window[1], ends[0]))
    return marks, ends, None if connected is None else int(connected)


async def drive(
    target: Target, tokens: dict[str, str], payloads: list[Payload], settings: Settings
) -> tuple[Tally, Window]:
    """Connect the clients, let them work through a warm-up and one measured window, stop them."""
    tally, peak = Tally(), [0.0]
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 * 2**20)]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{target.port}", options=[*options, ("fedrl.bench.channel", i)])
        for i in range(settings.channels)
    ]  # the distinct argument gives each channel its own connection
    idle_mb = proc_kb(target.pid, "VmRSS") / 1024
    watcher = asyncio.create_task(watch_rss(target.pid, tally, peak))
    started = time.perf_counter()
    clients = await register_all([Calls(c) for c in channels], tokens, tally)
    connect_s = time.perf_counter() - started
    tasks = [asyncio.create_task(beat(calls, metadata, tally)) for calls, _, metadata in clients]
    tasks += [asyncio.create_task(work(calls, name, metadata, payloads, tally)) for calls, name, metadata in clients]
    marks, ends, connected = await measure_window(target, tally, settings)
    tally.stopping = True
    peak[0] = max(peak[0], proc_kb(target.pid, "VmHWM") / 1024)
    await asyncio.wait(tasks, timeout=5.0)  # let calls in flight finish, then cancel the rest
    for task in [*tasks, watcher]:
        task.cancel()
    await asyncio.gather(*tasks, watcher, return_exceptions=True)
    for channel in channels:
        await channel.close()
    elapsed = ends[0] - marks[0]
    server, generator, busy, kernel = ((ends[i] - marks[i]) / elapsed for i in (1, 2, 3, 4))
    return tally, Window(
        connect_s,
        len(clients),
        connected,
        idle_mb,
        peak[0],
        server,
        kernel,
        generator,
        max(0.0, busy - server - generator),
        elapsed,
    )


def server_config(hidden: tuple[int, ...], durability: str, settings: Settings) -> dict:
    """Asynchronous FedBuff, no gate, limits that let every client submit whenever it likes."""
    return {
        "experiment": {
            "learner": {"name": "ppo", "hidden": list(hidden)},
            "strategy": {"name": "fedbuff", "buffer_size": BUFFER_SIZE},
            "federation": {"n_clients": settings.clients, "rounds": 10**7, "local_steps": ENV_STEPS},
        },
        "rounds": {"max_staleness": 10**6, "heartbeat_s": HEARTBEAT_S, "liveness_s": 30.0},
        "gate": {"enabled": False},
        "limits": {
            "rate_per_s": 1000.0,
            "burst": 1000,
            "max_env_steps": ENV_STEPS,
            "max_concurrent_streams": 2 * settings.clients + 64,
        },
        "store": {"durability": durability},
    }


def add_clients(state_dir: Path, n: int) -> dict[str, str]:
    """n clients in a fresh state directory, in one transaction; name -> token."""
    store = Store(state_dir)
    store.db.execute("BEGIN")
    tokens = {f"c{i:05d}": store.add_client(f"c{i:05d}", time.time()) for i in range(n)}
    store.db.execute("COMMIT")
    store.close()
    return tokens


def wait_for_info(proc: subprocess.Popen, path: Path, log: Path) -> dict:
    """The started server's ``server.json`` (the echo server writes the same)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.1)
    raise RuntimeError(f"server did not start in 180 s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_problems(log: Path) -> dict[str, int]:
    """Warning and error lines of the server's JSON log, by event."""
    found: Counter = Counter()
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            found["(not JSON) " + line[:60]] += 1
            continue
        if entry.get("level") in ("warning", "error", "critical"):
            found[f"{entry['level']} {entry.get('event')}"] += 1
    return dict(found)


def result(
    model: str,
    dim: int,
    server: str,
    durability: str,
    tally: Tally,
    window: Window,
    stored: int | None,
    problems: dict[str, int],
) -> Result:
    """One run's figures from what the generator counted and what the window measured."""
    latencies = np.array(tally.latencies) * 1e3 if tally.latencies else np.array([float("nan")])
    errors = {f"{method} {code}": n for (method, code), n in sorted(tally.errors.items())}
    return Result(
        model,
        dim,
        server,
        durability,
        tally.accepted / window.elapsed,
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 99)),
        errors,
        window,
        stored,
        tally.acked,
        problems,
        tally.details,
    )


def run_fedrl(model: str, durability: str, payloads: list[Payload], dim: int, settings: Settings) -> Result:
    """Start ``fedrl server`` on a fresh state directory, load it, stop it, read what it stored."""
    with tempfile.TemporaryDirectory(prefix="fedrl-load-") as tmp:
        folder, state = Path(tmp), Path(tmp) / "state"
        tokens = add_clients(state, settings.clients)
        config = folder / "server.yaml"
        config.write_text(yaml.safe_dump(server_config(MODELS[model], durability, settings)))
        log = folder / "server.log"
        command = [
            sys.executable,
            "-m",
            "fedrl.cli",
            "server",
            "--config",
            str(config),
            "--state-dir",
            str(state),
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--insecure",
            *(arg for assignment in settings.server_sets for arg in ("--set", assignment)),
        ]
        with open(log, "w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        try:
            info = wait_for_info(proc, state / "server.json", log)
            target = Target(info["pid"], info["port"], info["metrics_port"])
            tally, window = asyncio.run(drive(target, tokens, payloads, settings))
        finally:
            stop_server(proc)
        with sqlite3.connect(state / "server.db") as db:
            stored = db.execute("SELECT COUNT(*) FROM updates").fetchone()[0]
        return result(model, dim, "fedrl", durability, tally, window, stored, log_problems(log))


def run_echo(model: str, payloads: list[Payload], dim: int, settings: Settings, aio: bool = False) -> Result:
    """The same load against ``benchmarks/_echo_server.py`` (its grpc.aio twin with ``aio``)."""
    with tempfile.TemporaryDirectory(prefix="fedrl-echo-") as tmp:
        info_path, log = Path(tmp) / "echo.json", Path(tmp) / "echo.log"
        command = [
            sys.executable,
            str(ROOT / "benchmarks" / "_echo_server.py"),
            "--workers",
            str(2 * settings.clients + 64),
            "--max-pending",
            str(4 * settings.clients),
            "--info",
            str(info_path),
            *(["--aio"] if aio else []),
        ]
        with open(log, "w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        try:
            info = wait_for_info(proc, info_path, log)
            tokens = {f"c{i:05d}": "echo" for i in range(settings.clients)}
            tally, window = asyncio.run(drive(Target(info["pid"], info["port"], None), tokens, payloads, settings))
        finally:
            stop_server(proc)
        return result(model, dim, "grpc.aio echo" if aio else "grpcio echo", "-", tally, window, None, {})


# --- the whole benchmark --------------------------------------------------------------------------
def model_dim(model: str) -> int:
    """Parameters of the model the server would train."""
    return Setup(parse_config({"learner": {"name": "ppo", "hidden": list(MODELS[model])}})).net.spec.dim


def make_payloads(dim: int, seed: int = 0) -> list[Payload]:
    """POOL random deltas of ``dim`` float32, each with its header and serialized chunk messages."""
    rng = np.random.default_rng(seed)
    payloads = []
    for _ in range(POOL):
        delta = (0.01 * rng.standard_normal(dim)).astype(np.float32)
        chunks = tuple(pb.UpdatePart(chunk=c).SerializeToString() for c in codec.chunks(delta))
        payloads.append(Payload(convert.vector_header(delta), chunks))
    return payloads


def show(r: Result) -> None:
    """One run's figures on one line, then the first details of each kind of failed call."""
    w = r.window
    print(
        f"  {r.model:>4} {r.server:>11} {r.durability:>7}: {r.rate:8,.0f} updates/s  p50 {r.p50_ms:7,.0f} ms  "
        f"p99 {r.p99_ms:7,.0f} ms  failed calls {sum(r.errors.values())} {r.errors or ''}  "
        f"{w.registered} registered in {w.connect_s:.1f} s, {w.connected} connected  peak RSS {w.peak_rss_mb:,.0f} MB  "
        f"cores: server {w.server_cores:.2f} generator {w.generator_cores:.2f} other {w.other_cores:.2f}  "
        f"acked {r.acked} stored {r.stored}  server log {r.log_problems or '-'}",
        flush=True,
    )
    for key, (details, at) in r.details.items():
        print(f"    first {key}: {details!r}, {at:.1f} s into the run", flush=True)


def measure(settings: Settings, durabilities: tuple[str, ...]) -> list[Result]:
    """For each model: the ceiling, then fedrl under each durability."""
    results = []
    for model in settings.models:
        dim = model_dim(model)
        payloads = make_payloads(dim)
        print(f"{model}: {dim:,} parameters, {settings.clients} clients on {settings.channels} channels", flush=True)
        results.append(run_echo(model, payloads, dim, settings))
        show(results[-1])
        if settings.aio_echo:
            results.append(run_echo(model, payloads, dim, settings, aio=True))
            show(results[-1])
        for durability in durabilities:
            results.append(run_fedrl(model, durability, payloads, dim, settings))
            show(results[-1])
    return results


KINDS = {
    ("grpcio echo", "-"): "bare grpcio (ceiling)",
    ("grpc.aio echo", "-"): "bare grpc.aio",
    ("fedrl", "process"): "fedrl, durability process",
    ("fedrl", "fsync"): "fedrl, durability fsync",
}


def plot(results: list[Result], settings: Settings) -> None:
    """Accepted updates/s and peak server RSS per model (log scales), one bar per server."""
    fig, (rate_ax, rss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    kinds = {kind: label for kind, label in KINDS.items() if any((r.server, r.durability) == kind for r in results)}
    x, width = np.arange(len(settings.models)), 0.8 / len(kinds)
    for k, (kind, label) in enumerate(kinds.items()):
        rows = {r.model: r for r in results if (r.server, r.durability) == kind}
        rates = [rows[m].rate for m in settings.models]
        at = x + (k - (len(kinds) - 1) / 2) * width
        rate_ax.bar(at, rates, width, label=label)
        if kind[0] == "fedrl":  # its fraction of the ceiling above each bar
            for i, (m, rate) in enumerate(zip(settings.models, rates)):
                ceiling = next(r.rate for r in results if r.model == m and r.server == "grpcio echo")
                rate_ax.text(at[i], rate * 1.05, f"{rate / ceiling:.2f}x", ha="center", fontsize=7)
        rss_ax.bar(at, [rows[m].window.peak_rss_mb for m in settings.models], width, label=label)
    rate_ax.axhline(TARGET_RATE, color="black", linestyle=":", label=f"target at 100k: {TARGET_RATE}/s")
    for ax, title in ((rate_ax, "accepted updates / s"), (rss_ax, "peak server RSS (MB)")):
        ax.set_xticks(x, [f"{m} params" for m in settings.models])
        ax.set_yscale("log")
        ax.set_title(title)
    fig.suptitle(
        f"{settings.clients:,} clients in a closed loop over {settings.channels} channels; "
        "server and generator on one 2-core machine",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(*rate_ax.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8, frameon=False)
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "load.png", dpi=110)


def memory_bound_mb(r: Result, settings: Settings) -> float:
    """The bound docs/deployment.md states for a server's memory, for this load: idle + 3 K V (the
    round read into one buffer, the strategy's stack, and the freed buffer of the round before,
    which the allocator keeps for reuse) + W (V + 2 MiB) (uploads read and checked at once, each with
    gRPC's copy of a chunk) + S x 64 KiB (the windows of the calls waiting unread) + 8 V (the
    deployed model, the candidate, the strategy's state, the versions kept serialized for pulls);
    V = 4 x parameters, no download in progress."""
    v = 4 * r.dim
    streams = _server_set(settings, "limits.max_concurrent_streams", 2 * settings.clients + 64)
    workers = _server_set(settings, "limits.worker_threads", LimitsConfig().worker_threads)
    bound = 3 * BUFFER_SIZE * v + workers * (v + 2 * 2**20) + streams * 64 * 2**10 + 8 * v
    return r.window.idle_rss_mb + bound / 2**20


def _server_set(settings: Settings, key: str, default: int) -> int:
    """The value a ``--server-set key=N`` gave the fedrl server, else ``default``."""
    given = [value for name, _, value in (s.partition("=") for s in settings.server_sets) if name == key]
    return int(given[-1]) if given else default


def table(results: list[Result], settings: Settings) -> str:
    """The figures of every run, with the rate as a fraction of the ceiling measured for the same model."""
    ceiling = {r.model: r.rate for r in results if r.server == "grpcio echo"}
    rows = []
    for r in results:
        w = r.window
        rows.append(
            [
                f"{r.model} ({r.dim:,})",
                r.server,
                r.durability,
                f"{r.rate:,.0f}",
                f"{r.rate / ceiling[r.model]:.2f}" if ceiling.get(r.model) else "-",
                f"{r.p50_ms:,.0f}",
                f"{r.p99_ms:,.0f}",
                ", ".join(f"{k}: {n}" for k, n in r.errors.items()) or "0",
                f"{w.registered} / {'-' if w.connected is None else w.connected}",
                f"{w.connect_s:.1f}",
                f"{w.peak_rss_mb:,.0f}",
                f"{w.idle_rss_mb:,.0f} / {memory_bound_mb(r, settings):,.0f}" if r.server == "fedrl" else "-",
                f"{w.server_cores:.2f} / {w.generator_cores:.2f} / {w.other_cores:.2f}",
                f"{_ms_per_update(w.server_cores, r)} ({_ms_per_update(w.server_kernel_cores, r)}) / "
                f"{_ms_per_update(w.generator_cores, r)}",
            ]
        )
    return markdown_table(
        [
            "model (params)",
            "server",
            "durability",
            "updates/s",
            "vs bare grpcio",
            "p50 ms",
            "p99 ms",
            "failed calls",
            "registered / connected",
            "register all (s)",
            "peak server RSS MB",
            "idle / bound MB",
            "cores: server / generator / other",
            "CPU ms per update: server (in the kernel) / generator",
        ],
        rows,
    )


def _ms_per_update(cores: float, r: Result) -> str:
    """CPU milliseconds per accepted update, from the cores a process used during the window."""
    return f"{1e3 * cores / r.rate:.2f}" if r.rate > 0 else "-"


def cpu_ceiling(results: list[Result]) -> str:
    """What each 100k-parameter fedrl run spent per accepted update, and the rate the machine's cores
    would carry at those costs: server and generator share the cores. An estimate, not a bound: the
    generator's figure holds its clients' heartbeats, a cost per second that weighs less per update at
    higher rates."""
    cores = len(os.sched_getaffinity(0))
    lines = []
    for r in (r for r in results if r.model == "100k" and r.server == "fedrl" and r.rate > 0):
        w = r.window
        server_ms, generator_ms = 1e3 * w.server_cores / r.rate, 1e3 * w.generator_cores / r.rate
        lines.append(
            f"durability {r.durability}: the server spent {server_ms:.2f} ms of CPU per update "
            f"({1e3 * w.server_kernel_cores / r.rate:.2f} in the kernel), the generator {generator_ms:.2f}, so "
            f"{cores} cores would carry about {1e3 * cores / (server_ms + generator_ms):,.0f} updates/s of the two "
            "at these costs"
        )
    return "; ".join(lines) or "no 100k-parameter fedrl run"


def verdict(results: list[Result]) -> str:
    """The load target, judged on each 100k-parameter fedrl run."""
    lines = []
    for r in (r for r in results if r.model == "100k" and r.server == "fedrl"):
        met = r.rate >= TARGET_RATE and not r.errors and (r.window.connected or 0) >= TARGET_CLIENTS
        lines.append(
            f"durability {r.durability}: {r.rate:,.0f}/s, {sum(r.errors.values())} failed calls, "
            f"{r.window.connected} clients connected: **{'met' if met else 'not met'}**"
        )
    return "; ".join(lines) or "not run"


def description(settings: Settings) -> str:
    hidden = ", ".join("x".join(map(str, MODELS[m])) for m in settings.models)
    return (
        f"One asyncio process (grpc.aio) plays {settings.clients:,} clients, each with its own token, sharing "
        f"{settings.channels} gRPC channels (one TCP connection each) to `fedrl server` on loopback. Every client "
        f"registers, heartbeats every {HEARTBEAT_S:g} s and loops GetTask -> PushUpdate with no pause: a closed loop "
        "that saturates the server, so the PushUpdate latency is mostly queue (p50 about clients / rate). Server: "
        f"asynchronous FedBuff (buffer {BUFFER_SIZE}), no evaluation gate, CartPole PPO with hidden layers {hidden}, "
        f"`limits.max_concurrent_streams` {2 * settings.clients + 64} (the default 256 would refuse most of "
        f"{settings.clients:,} active clients). Rates over a {settings.window_s:g} s window after "
        f"{settings.warmup_s:g} s of warm-up; `connected` is the server's own `fedrl_clients_connected` at the "
        "window's end. Durability `fsync`: every acknowledged update is fsynced (file and SQLite); `process`: it "
        "survives kill -9 of the server, not a power cut. The ceiling, `bare grpcio`, is `benchmarks/_echo_server.py` "
        "under the same generator: grpcio's synchronous server with the same message-size options, a thread for "
        "every call it may hold (2 x clients + 64) and gRPC's growing HTTP/2 windows (plus "
        "`grpc.server.max_pending_requests` at 4x the clients), answering every call without parsing, hashing or "
        "storing; `grpc.aio echo` is the same on grpc.aio, the transport `fedrl server` runs on. Generator, server "
        "and whatever else runs on this shared 2-core machine compete for the same two cores: the last column gives "
        "the cores each used during the window."
    )


LIMITS = (
    "What limits it. Since 2026-12-07 the service runs on grpc.aio: one event loop reads every call and does an "
    "update's work (reassembly, SHA-256 once, checks, its file, its record), and a pool of `limits.worker_threads` "
    "threads only waits for the disk (the file's fsync, then the group commit: one fsync of SQLite's log for all "
    "the records that arrived meanwhile); the rate limits and liveness left the round's lock. Before, a thread per "
    "call handled each update (227/s at 100k, fsync, 232 with process durability) and the server spent about 6 ms "
    "of CPU per GetTask + PushUpdate, most of it handing the coordinator's lock and the interpreter between "
    "threads (about 110 context switches per update, 46 % of its samples in the kernel). How each stage costs, "
    "measured by cutting the upload path short in the aio service (100k, durability process, the same generator): "
    "acknowledging without reading the update, 732/s (0.84x the bare server); after reassembling and hashing it on "
    "the pool, 536/s; after the checks, 382/s; after writing its file, 304/s; the whole path on the pool, 237/s, "
    "where the pool's threads waited for the coordinator's lock 60 % of their busy time while the process held the "
    "interpreter's lock only 39 % of the time (py-spy): the hand-offs between threads, not the work, set the pace. "
    "Doing the work on the loop and only the waits on the pool took durability process from 237 to 350/s; with "
    "fsync, whose two waits remain hand-offs, 235 to 249/s. A larger pool, more uploads read at once (up to all "
    "1,000), a shorter interpreter switch interval (0.1 and 0.5 ms) and OPENBLAS_NUM_THREADS=1 moved nothing "
    "beyond noise; so did closing no FedBuff round at all (266 against 235/s): aggregation and deleting a round's "
    "files are not the limit. 500/s needs two things at once. Less CPU per update: the generator and the server "
    "share this machine's two cores, so at 500/s the two together may spend 4 ms of CPU per update (the line CPU "
    "above gives what each spent, and the rate the cores would carry at those costs); a third or more of the "
    "server's is the kernel's (the upload's bytes through the socket, its file written, fsynced, renamed and "
    "later deleted), and grpc.aio's own machinery (its callbacks and the stream's iteration) held the interpreter "
    "for 43 % of the samples that held it (py-spy --gil, 100k, fsync, 2026-12-08). And the work off this one event "
    "loop: front-end processes that reassemble, "
    "hash and write updates and hand the coordinator only their records, whose hand-offs cost CPU too; updates "
    "appended to one file per round instead of a file each would cut the kernel's part (measured alone on this "
    "machine for a 400 KB update: a file created, written and deleted costs 0.25 ms against 0.1 ms for an append, "
    "and its own fsync 1.9 ms against 0.4 ms an update when ten appends share one). Memory: `fedrl server` keeps "
    "gRPC's fixed 64 KiB window per call "
    "(`limits.grow_windows: false`) and reads at most `limits.worker_threads` uploads at once, each into one "
    "buffer of its declared size that becomes the update (no copy); the others wait unread in their windows. A "
    "round (FedBuff's buffer) holds at most `buffer_size` updates: arrivals while it is full or being aggregated "
    "queue in the next buffers, at most `rounds.max_staleness` ahead (fewer for a stale update), and past that are "
    "refused as UNAVAILABLE from the header alone, which devices send again later. Before 2026-12-08 arrivals "
    "during a slow close all joined the next round, which grew to 257 and then 488 updates of 1M parameters (2 GB "
    "read at once): 62 updates/s and 3.4 GB at 1M with fsync, against 105/s and 1.5 GB with the cap (same command, "
    "same machine, same hour). The column `idle / bound MB` gives the bound docs/deployment.md states, from the "
    "idle server's memory (`memory_bound_mb` here)."
)


def write_report(results: list[Result], settings: Settings) -> None:
    """The docs section and its plot."""
    plot(results, settings)
    body = "\n\n".join(
        [
            f"## Load: {settings.clients:,} clients against `fedrl server`\n\n`{COMMAND}` ({machine()})",
            description(settings),
            table(results, settings),
            f"Target: {TARGET_CLIENTS:,} connected clients, >= {TARGET_RATE} accepted 100k-parameter updates/s, "
            f"no failed calls. Measured: {verdict(results)}. CPU: {cpu_ceiling(results)}.",
            LIMITS,
            "![load](img/load.png)",
        ]
    )
    print(body)
    write_section("load", body)


def main() -> None:
    parser = argparse.ArgumentParser(description="Load benchmark of fedrl server.")
    parser.add_argument(
        "--quick", action="store_true", help="100 clients, models 10k and 100k, short windows; prints only"
    )
    parser.add_argument("--clients", type=int, help=f"simulated clients (default {TARGET_CLIENTS}, 100 with --quick)")
    parser.add_argument("--channels", type=int, default=16, help="gRPC channels the clients share (default 16)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="only these models")
    parser.add_argument("--durability", nargs="+", choices=["fsync", "process"], default=["fsync", "process"])
    parser.add_argument(
        "--server-set",
        action="append",
        default=[],
        help="a `fedrl server --set` override for the fedrl server, e.g. limits.worker_threads=8 (repeatable)",
    )
    args = parser.parse_args()
    clients = args.clients or (100 if args.quick else TARGET_CLIENTS)
    models = tuple(args.models or (("10k", "100k") if args.quick else MODELS))
    windows = (2.0, 4.0) if args.quick else (6.0, 12.0)
    settings = Settings(clients, args.channels, *windows, models, tuple(args.server_set))
    results = measure(settings, tuple(args.durability))
    changed = args.quick or args.clients or args.models or args.channels != 16 or args.server_set
    default = not (changed or len(args.durability) < 2)
    print(table(results, settings))
    print(f"CPU: {cpu_ceiling(results)}")
    if default:  # a partial or changed run: figures printed, docs left alone
        write_report(results, settings)


if __name__ == "__main__":
    main()
