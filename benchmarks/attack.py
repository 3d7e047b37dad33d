"""One attacker against a deployed fleet: can one enrolled client stall training?

A real ``fedrl server`` process (gRPC on a free loopback port, plain text, its state directory in a
temporary folder) runs ``examples/deploy/server.yaml`` as it is -- the server's defaults, a round
that waits for all five devices or after its 60 s deadline for three, the evaluation gate, and the
robust rule docs/security.md recommends (FedAvg with a coordinate-wise trimmed mean, 20 % each end)
-- with smaller networks (hidden 32x32) and no stop at the target, so that it trains for the whole
measuring window, and seed 1 by default (seed 0's initial 32x32 policy happens to score 148 on the
gate's held-out CartPoles, and the gate then keeps it for many rounds: no learning to compare). Five
honest ``fedrl client`` processes (CartPole, client indices 0-4, each its own physics) are enrolled
in the store beforehand, as ``fedrl fleet add-client`` does.

Each scenario starts a fresh server and fleet and measures a fixed window that opens once every
honest client acts; the window's figures are read from the server's store and its Prometheus
endpoint. The baseline is the honest fleet alone. Every other scenario is the same fleet plus one
more enrolled client, ``mallory``: a process (this script, ``--attacker``) that for the whole run

- holds as many silent uploads as it can: PushUpdate streams that send a valid header and then
  nothing (up to 8 at once; a refused one is retried after 1 s, a cancelled one at once);
- pushes poisoned updates for every task it is given: 3e38 in every coordinate (finite), a small
  delta claiming 10x the step budget, and the deployed parameters sign-flipped and scaled to 1.9x
  their norm (just inside ``limits.max_update_norm_ratio``) claiming 4x the step budget (the most
  accepted; its weight is capped at the budget);
- hammers Heartbeat and GetTask with random unknown tokens, one call after another.

"all attacks" does the three at once; the other rows do one each. The attacker process shares the
machine's two cores with the server and the clients, so its CPU shows up as slower honest training.

    python benchmarks/attack.py [--seconds 30] [--seed 1]        # about 4.5 minutes
    python benchmarks/attack.py --only baseline "silent uploads"   # some rows; prints, writes nothing

Like every benchmark it writes its section to ``$FEDRL_BENCH_DOC`` (by default
``bench-results/benchmarks.md``, untracked); a run with ``--only`` prints its tables and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

SERVICE = "fedrl.v1.Federation"
CONFIG = Path(__file__).resolve().parents[1] / "examples" / "deploy" / "server.yaml"
HONEST = 5  # the deploy example's fleet: experiment.federation.n_clients
ATTACKER = "mallory"
SCENARIOS = {  # name -> the attacks mallory makes (none: no attacker at all)
    "baseline": (),
    "all attacks": ("silent", "poison", "strangers"),
    "silent uploads": ("silent",),
    "poisoned updates": ("poison",),
    "unknown tokens": ("strangers",),
    "baseline, again": (),  # the same honest fleet once more: how much two runs differ on this machine
}
SILENT_STREAMS = 8  # silent uploads the attacker tries to hold at once
SILENT_RETRY_S = 1.0  # after a refused one
HUGE = 3e38  # finite in float32 (its largest is 3.4e38)
SCALE = 1.9  # the scaled update's norm, in deployed-model norms (the bound is 2.0)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PROGRESS_S = 5.0
START_TIMEOUT_S = 120.0


# --- the attacker (a process of its own: ``attack.py --attacker SPEC``) ------------------------------
@dataclass
class Tally:
    """What the attacker saw, by attack and outcome (a status code name, or OK)."""

    counts: dict = field(default_factory=lambda: defaultdict(Counter))
    longest_silent_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, outcome: str) -> None:
        """Count one outcome of one attack."""
        with self.lock:
            self.counts[what][outcome] += 1


def _code(error: grpc.RpcError) -> str:
    code = error.code()
    return code.name if code is not None else "UNKNOWN"


def silent_uploads(spec: dict, stop: threading.Event, release: threading.Event, tally: Tally) -> None:
    """Keep up to SILENT_STREAMS PushUpdate streams open that send a header and then nothing."""
    from fedrl.wire import convert
    from fedrl.wire.records import Submission

    channel = grpc.insecure_channel(spec["address"])
    push = channel.stream_unary(f"/{SERVICE}/PushUpdate")
    metadata = (("authorization", f"Bearer {spec['token']}"),)
    delta = np.zeros(spec["dim"], np.float32)
    slots: list[tuple[grpc.Future, float] | None] = [None] * SILENT_STREAMS
    retry_at = [0.0] * SILENT_STREAMS
    n = 0

    def parts(header: bytes):
        yield header
        release.wait()

    try:
        while not stop.is_set():
            now = time.monotonic()
            for i, slot in enumerate(slots):
                if slot is not None and slot[0].done():
                    future, opened = slot
                    error = future.exception()
                    outcome = "OK" if error is None else _code(error)
                    tally.add("silent", outcome)
                    if outcome == "CANCELLED":  # held until the server cancelled it: the slot is free again
                        with tally.lock:
                            tally.longest_silent_s = max(tally.longest_silent_s, now - opened)
                    else:
                        retry_at[i] = now + SILENT_RETRY_S
                    slots[i] = None
                if slots[i] is None and now >= retry_at[i]:
                    n += 1
                    submission = Submission(f"{spec['name']}-silent-{n}", spec["name"], 1, 0, delta, 1, {})
                    header = next(convert.update_parts(submission)).SerializeToString()
                    slots[i] = (push.future(parts(header), metadata=metadata, timeout=3600), now)
            stop.wait(0.1)
    finally:
        for slot in slots:
            if slot is not None:
                slot[0].cancel()
        release.set()
        channel.close()


def poisoned_updates(spec: dict, stop: threading.Event, tally: Tally) -> None:
    """For every task: a 3e38 update, one claiming 10x the step budget, and a sign-flipped, scaled copy
    of the deployed model (1.9x its norm) claiming 4x the budget."""
    from fedrl.edge.grpc_link import GrpcLink
    from fedrl.edge.link import Unreachable
    from fedrl.wire.records import Rejected, Submission, Wait

    link = GrpcLink(spec["address"], spec["token"], spec["name"], timeout_s=30)
    rng, steps, n = np.random.default_rng(spec["seed"]), spec["local_steps"], 0
    try:
        while not stop.is_set():
            try:
                link.register()
                break
            except (Rejected, Unreachable) as failure:
                tally.add("register", getattr(getattr(failure, "reason", None), "name", "UNAVAILABLE"))
                stop.wait(1.0)
        while not stop.is_set():
            try:
                task = link.task()
                if isinstance(task, Wait):
                    stop.wait(task.retry_after_s)
                    continue
                params = link.pull(task.base_version).params
            except (Rejected, Unreachable) as failure:
                tally.add("task", getattr(getattr(failure, "reason", None), "name", "UNAVAILABLE"))
                stop.wait(1.0)
                continue
            poisons = {
                "huge": (np.full(params.size, HUGE, np.float32), steps),
                "overclaim": ((0.01 * rng.standard_normal(params.size)).astype(np.float32), 10 * steps),
                "scaled": ((-SCALE * params).astype(np.float32), 4 * steps),
            }
            accepted = False
            for kind, (delta, claimed) in poisons.items():
                n += 1
                submission = Submission(
                    f"{spec['name']}-{n}", spec["name"], task.round, task.base_version, delta, claimed
                )
                try:
                    link.push(submission)
                    tally.add(kind, "OK")
                    accepted = True
                except Rejected as refusal:
                    tally.add(kind, refusal.reason.name)
                except Unreachable:
                    tally.add(kind, "UNAVAILABLE")
            if not accepted:  # none got in: ask again a second later, not in a tight loop
                stop.wait(1.0)
    finally:
        link.close()


def unknown_tokens(spec: dict, stop: threading.Event, tally: Tally) -> None:
    """Heartbeat and GetTask with a fresh random token each, back to back."""
    from fedrl.wire import fedrl_pb2 as pb

    channel = grpc.insecure_channel(spec["address"])
    beat = channel.unary_unary(f"/{SERVICE}/Heartbeat")
    task = channel.unary_stream(f"/{SERVICE}/GetTask")
    beat_request, task_request = pb.HeartbeatRequest().SerializeToString(), pb.TaskRequest().SerializeToString()
    n = 0
    try:
        while not stop.is_set():
            metadata = (("authorization", f"Bearer {secrets.token_urlsafe(24)}"),)
            n += 1
            try:
                if n % 2:
                    beat(beat_request, metadata=metadata, timeout=10)
                else:
                    list(task(task_request, metadata=metadata, timeout=10))
                tally.add("strangers", "OK")
            except grpc.RpcError as error:
                tally.add("strangers", _code(error))
    finally:
        channel.close()


def attacker_main(spec_path: Path) -> None:
    """Run the attacks of ``spec_path`` until stdin closes; print what happened as JSON on stdout."""
    spec = json.loads(spec_path.read_text())
    stop, release, tally = threading.Event(), threading.Event(), Tally()
    bodies = {
        "silent": lambda: silent_uploads(spec, stop, release, tally),
        "poison": lambda: poisoned_updates(spec, stop, tally),
        "strangers": lambda: unknown_tokens(spec, stop, tally),
    }
    threads = [threading.Thread(target=bodies[kind], name=kind, daemon=True) for kind in spec["attacks"]]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    sys.stdin.read()  # until the benchmark closes our stdin
    stop.set()
    deadline = time.monotonic() + 10.0
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    seconds = time.monotonic() - started
    counts = {what: dict(outcomes) for what, outcomes in tally.counts.items()}
    print(json.dumps({"seconds": seconds, "counts": counts, "longest_silent_s": tally.longest_silent_s}), flush=True)


# --- the benchmark ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """One benchmark run's shape."""

    seconds: float
    seed: int
    overrides: tuple[str, ...]


@dataclass
class Row:
    """What one scenario measured."""

    scenario: str
    rounds: int  # closed inside the window
    longest_round_s: float  # the longest round that closed in the window, or the open one's age at its end
    longest_open: bool  # the longest is the round still open at the window's end
    version: int  # deployed at the window's end
    eval_return: float | None  # the gate's return of that version
    gate_refused: int  # candidates the gate refused in the window
    attacker_sampled: int  # rounds (closed in the window, or open at its end) whose sample included the attacker
    sampled_of: int
    attacker_accepted: int  # the attacker's updates in the store
    honest_accepted: int
    rejected: dict[str, int]  # the server's updates_rejected_total by reason (every client)
    attacker: dict  # the attacker's own tally
    server_cores: float
    attacker_cores: float
    deadline_rounds: int  # rounds that closed at their deadline (lasted at least deadline_s)


def server_overrides(seed: int) -> tuple[str, ...]:
    """``--set`` overrides of the deploy example: small networks, no stop at the target, the seed."""
    return (
        "experiment.learner.hidden=[32, 32]",
        "experiment.federation.rounds=100000",
        "experiment.federation.stop_at_target=false",
        f"experiment.seed={seed}",
    )


def scrape(port: int) -> dict[str, float]:
    """Every sample of the server's Prometheus endpoint, by its name with labels."""
    samples = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
    return samples


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def logged(log: Path, event: str) -> bool:
    """Whether the JSON log at ``log`` has a line with ``event``."""
    if not log.exists():
        return False
    for line in log.read_text().splitlines():
        try:
            if json.loads(line).get("event") == event:
                return True
        except (json.JSONDecodeError, AttributeError):
            continue
    return False


class Fleet:
    """The processes of one scenario, in ``folder``; ``stop()`` ends every one of them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, command: list[str], **kwargs) -> subprocess.Popen:
        """Start ``command`` in a session of its own, its stderr (and stdout, unless piped) to ``name.log``."""
        with open(self.folder / f"{name}.log", "w") as log:
            kwargs.setdefault("stdout", log)
            kwargs.setdefault("stdin", subprocess.DEVNULL)
            process = subprocess.Popen(command, stderr=log, env=ONE_THREAD, start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM to every process group still running, then SIGKILL to those that linger."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def fedrl(*args: str) -> list[str]:
    """A ``fedrl`` command line run by this interpreter."""
    return [sys.executable, "-m", "fedrl.cli", *args]


def start_fleet(fleet: Fleet, settings: Settings, attacks: tuple[str, ...], dims: tuple[int, int]):
    """Enroll the clients, start the server, the honest clients and the attacker; returns the server,
    its ports, the honest clients and the attacker (None without attacks)."""
    from fedrl.server.store import Store

    folder = fleet.folder
    names = [f"dev{i}" for i in range(HONEST)] + ([ATTACKER] if attacks else [])
    store = Store(folder / "server")
    tokens = {name: store.add_client(name, time.time()) for name in names}
    store.close()
    for name in names:
        (folder / f"{name}.token").write_text(tokens[name] + "\n")
        (folder / f"{name}.token").chmod(0o600)
    sets = [arg for override in settings.overrides for arg in ("--set", override)]
    server = fleet.start(
        "server",
        fedrl(
            "server",
            "--config",
            str(CONFIG),
            *sets,
            "--state-dir",
            str(folder / "server"),
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--insecure",
        ),
    )
    info_path, deadline = folder / "server" / "server.json", time.monotonic() + START_TIMEOUT_S
    while not info_path.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.1)
    info = json.loads(info_path.read_text())
    address = f"127.0.0.1:{info['port']}"
    clients = [
        fleet.start(
            f"dev{i}",
            fedrl(
                "client",
                "--server",
                address,
                "--name",
                f"dev{i}",
                "--client-index",
                str(i),
                "--token-file",
                str(folder / f"dev{i}.token"),
                "--state-dir",
                str(folder / f"dev{i}"),
                "--env",
                "cartpole",
                "--insecure",
            ),
        )
        for i in range(HONEST)
    ]
    attacker = None
    if attacks:
        spec = {
            "address": address,
            "token": tokens[ATTACKER],
            "name": ATTACKER,
            "attacks": list(attacks),
            "dim": dims[0],
            "local_steps": dims[1],
            "seed": settings.seed,
        }
        (folder / "attacker.json").write_text(json.dumps(spec))
        attacker = fleet.start(
            "attacker",
            [sys.executable, __file__, "--attacker", str(folder / "attacker.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    return server, info, clients, attacker


def wait_acting(fleet: Fleet, clients: list[subprocess.Popen]) -> None:
    """Until every honest client logs that it acts (a client that exits first fails the run)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(logged(fleet.folder / f"dev{i}.log", "acting") for i in range(HONEST)):
        for i, client in enumerate(clients):
            if client.poll() is not None:
                raise RuntimeError(f"client dev{i} exited:\n{(fleet.folder / f'dev{i}.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("the honest clients did not start acting in time")
        time.sleep(0.2)


def store_figures(state: Path, start: float, end: float, deadline_s: float) -> dict:
    """Rounds, versions and updates from the store (read after the server stopped), for [start, end]."""
    db = sqlite3.connect(f"file:{state / 'server.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        rounds = [dict(r) for r in db.execute("SELECT * FROM rounds ORDER BY round")]
        versions = {r["version"]: r["eval_return"] for r in db.execute("SELECT version, eval_return FROM versions")}
        updates = db.execute("SELECT client, accepted_at FROM updates").fetchall()
    finally:
        db.close()
    closed = [r for r in rounds if r["closed_at"] is not None and start <= r["closed_at"] <= end]
    open_at_end = [r for r in rounds if r["opened_at"] <= end and (r["closed_at"] is None or r["closed_at"] > end)]
    promoted = [r for r in rounds if r["closed_at"] is not None and r["closed_at"] <= end and r["promoted"]]
    version = promoted[-1]["new_version"] if promoted else 0
    durations = [(r["closed_at"] - max(r["opened_at"], start), False) for r in closed]
    durations += [(end - max(r["opened_at"], start), True) for r in open_at_end]
    longest = max(durations, default=(0.0, False))
    watched = closed + open_at_end
    return {
        "rounds": len(closed),
        "longest_round_s": longest[0],
        "longest_open": longest[1],
        "version": version,
        "eval_return": versions.get(version),
        "gate_refused": sum(1 for r in closed if not r["promoted"]),
        "attacker_sampled": sum(ATTACKER in json.loads(r["selected"]) for r in watched),
        "sampled_of": len(watched),
        "attacker_accepted": sum(1 for u in updates if u["client"] == ATTACKER and u["accepted_at"] <= end),
        "honest_accepted": sum(1 for u in updates if u["client"] != ATTACKER and start <= u["accepted_at"] <= end),
        "deadline_rounds": sum(1 for r in closed if r["closed_at"] - r["opened_at"] >= deadline_s),
    }


def run_scenario(name: str, attacks: tuple[str, ...], settings: Settings, dims: tuple[int, int], deadline_s: float):
    """One scenario on a fresh server and fleet: its ``Row``."""
    with tempfile.TemporaryDirectory(prefix="fedrl-attack-") as tmp:
        fleet = Fleet(Path(tmp))
        attacker_out = None
        try:
            server, info, clients, attacker = start_fleet(fleet, settings, attacks, dims)
            wait_acting(fleet, clients)
            start, marks = time.time(), (cpu_seconds(server.pid), cpu_seconds(attacker.pid) if attacker else 0.0)
            end = start + settings.seconds
            while (now := time.time()) < end:
                time.sleep(min(PROGRESS_S, end - now))
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{(fleet.folder / 'server.log').read_text()[-3000:]}")
                sample = scrape(info["metrics_port"])
                print(
                    f"  {name}: {min(time.time(), end) - start:4.0f}/{settings.seconds:g} s, round "
                    f"{sample.get('fedrl_current_round', 0):.0f} open, deployed version "
                    f"{sample.get('fedrl_deployed_version', 0):.0f}, updates accepted "
                    f"{sample.get('fedrl_updates_accepted_total', 0):.0f}",
                    flush=True,
                )
            metrics = scrape(info["metrics_port"])
            elapsed = time.time() - start
            server_cores = (cpu_seconds(server.pid) - marks[0]) / elapsed
            attacker_cores = (cpu_seconds(attacker.pid) - marks[1]) / elapsed if attacker else 0.0
            if attacker is not None:
                out, _ = attacker.communicate("", timeout=30)  # closing its stdin stops it
                attacker_out = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
        finally:
            fleet.stop()
        figures = store_figures(fleet.folder / "server", start, end, deadline_s)
    rejected = {
        key.split('reason="')[1].rstrip('"}'): int(value)
        for key, value in metrics.items()
        if key.startswith("fedrl_updates_rejected_total{") and value
    }
    return Row(
        name,
        **figures,
        rejected=rejected,
        attacker=attacker_out or {},
        server_cores=server_cores,
        attacker_cores=attacker_cores,
    )


def fmt_return(value: float | None) -> str:
    """A return, or '-' when there is none."""
    return "-" if value is None else f"{value:.1f}"


def outcomes(counts: dict, *kinds: str) -> str:
    """'OK 3, INVALID_ARGUMENT 2' for the summed outcomes of ``kinds`` in an attacker's tally."""
    total = Counter()
    for kind in kinds:
        total.update(counts.get(kind, {}))
    return ", ".join(f"{code} {n:,}" for code, n in total.most_common()) or "-"


def tables(rows: list[Row], seconds: float) -> tuple[str, str]:
    """The training table (ratios against the baseline) and the table of what the attacker did."""
    from _report import markdown_table

    base = next((r for r in rows if r.scenario == "baseline"), None)
    training = []
    for r in rows:
        ratio = f"{r.rounds / base.rounds:.2f}" if base and base.rounds else "-"
        return_ratio = (
            f"{r.eval_return / base.eval_return:.2f}"
            if base and base.eval_return and r.eval_return is not None
            else "-"
        )
        training.append(
            [
                r.scenario,
                r.rounds,
                ratio,
                f"{r.longest_round_s:.1f}{' (open)' if r.longest_open else ''}",
                r.deadline_rounds,
                r.version,
                fmt_return(r.eval_return),
                return_ratio,
                r.gate_refused,
                f"{r.attacker_sampled} / {r.sampled_of}" if SCENARIOS[r.scenario] else "-",
                r.honest_accepted,
                f"{r.server_cores:.2f}",
                f"{r.attacker_cores:.2f}" if SCENARIOS[r.scenario] else "-",
            ]
        )
    first = markdown_table(
        [
            "scenario",
            f"rounds in {seconds:g} s",
            "vs baseline",
            "longest round (s)",
            "rounds closed at the deadline",
            "deployed version",
            "its eval return",
            "return vs baseline",
            "candidates the gate refused",
            "rounds sampling the attacker",
            "honest updates accepted",
            "server cores",
            "attacker cores",
        ],
        training,
    )
    attacked = [r for r in rows if SCENARIOS[r.scenario]]
    second = markdown_table(
        [
            "scenario",
            "attacker updates stored",
            "server: updates refused",
            "poisoned: 3e38",
            "poisoned: 10x steps",
            "poisoned: scaled 1.9x, 4x steps",
            "silent uploads",
            "longest silent upload (s)",
            "unknown-token calls",
        ],
        [
            [
                r.scenario,
                r.attacker_accepted,
                ", ".join(f"{k} {v}" for k, v in sorted(r.rejected.items())) or "0",
                outcomes(r.attacker.get("counts", {}), "huge"),
                outcomes(r.attacker.get("counts", {}), "overclaim"),
                outcomes(r.attacker.get("counts", {}), "scaled"),
                outcomes(r.attacker.get("counts", {}), "silent"),
                f"{r.attacker.get('longest_silent_s', 0):.1f}" if "silent" in SCENARIOS[r.scenario] else "-",
                outcomes(r.attacker.get("counts", {}), "strangers"),
            ]
            for r in attacked
        ],
    )
    return first, second


def verdict(rows: list[Row], deadline_s: float) -> str:
    """One line per row after the baseline: its pace and return against the baseline's."""
    base = next((r for r in rows if r.scenario == "baseline"), None)
    if base is None or not base.rounds:
        return "No baseline to compare with."
    lines = []
    for r in rows:
        if r.scenario == "baseline":
            continue
        ratio = r.rounds / base.rounds
        if not SCENARIOS[r.scenario]:
            lines.append(
                f"- **{r.scenario}**: {r.rounds} rounds against {base.rounds} ({ratio:.2f}x), deployed return "
                f"{fmt_return(r.eval_return)}: how far apart two runs of the same honest fleet land on this machine."
            )
            continue
        stalled = r.longest_open and r.longest_round_s > 3 * base.longest_round_s
        lines.append(
            f"- **{r.scenario}**: {r.rounds} rounds against {base.rounds} ({ratio:.2f}x); "
            + ("the fleet kept its pace (within 20 %)" if ratio >= 0.8 else "**training was slowed**")
            + (f"; {r.deadline_rounds} round(s) waited for the {deadline_s:g} s deadline" if r.deadline_rounds else "")
            + (
                f"; **the round open at the window's end had waited {r.longest_round_s:.0f} s** "
                f"(the baseline's longest: {base.longest_round_s:.0f} s)"
                if stalled
                else ""
            )
            + f"; deployed return {fmt_return(r.eval_return)} (baseline {fmt_return(base.eval_return)})."
        )
    return "\n".join(lines)


def main() -> None:
    """Run every scenario, print the tables and (for a full run) write the report's ``attack`` section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window per scenario (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="the experiment's seed (default 1; see above)")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="only these scenarios; prints only")
    parser.add_argument("--attacker", type=Path, help=argparse.SUPPRESS)  # the attacker process itself
    args = parser.parse_args()
    if args.attacker is not None:
        attacker_main(args.attacker)
        return

    from _report import machine, write_section

    from fedrl.experiment.setup import Setup
    from fedrl.server.config import load_server_config

    settings = Settings(args.seconds, args.seed, server_overrides(args.seed))
    config = load_server_config(CONFIG, list(settings.overrides))
    dims = (Setup(config.experiment).net.spec.dim, config.experiment.federation.local_steps)
    deadline_s = config.rounds.deadline_s
    chosen = args.only or list(SCENARIOS)
    rows = []
    for name in chosen:
        print(f"{name}: {HONEST} honest clients{' + ' + ATTACKER if SCENARIOS[name] else ''}", flush=True)
        rows.append(run_scenario(name, SCENARIOS[name], settings, dims, deadline_s))
        print(f"  {rows[-1]}", flush=True)
    training, attacker = tables(rows, settings.seconds)
    judged = verdict(rows, deadline_s)
    command = "python benchmarks/attack.py" + (f" --seconds {args.seconds:g}" if args.seconds != 30.0 else "")
    command += f" --seed {args.seed}" if args.seed != 1 else ""
    body = f"""## One attacker against a deployed fleet

`{command}` ({machine()})

A `fedrl server` process runs `examples/deploy/server.yaml` -- FedAvg with a trimmed mean (20 % each
end), a synchronous round that waits for all {HONEST} devices or, after its {deadline_s:g} s deadline, for
{config.min_updates}; the evaluation gate on {config.gate.heldout_clients} held-out CartPoles; every limit at
the server's default -- with hidden layers 32x32, seed {args.seed} and no stop at the target, over gRPC on
loopback. {HONEST} honest `fedrl client` processes (CartPole, each its own physics) train. The attacked rows
add one more enrolled client, `{ATTACKER}` (a process of its own), which for the whole run holds as many
silent uploads as it can (a valid header, then nothing), pushes three poisoned updates for every task it
is given (3e38 in every coordinate; a small delta claiming 10x the step budget; the deployed parameters
sign-flipped at {SCALE}x their norm, claiming 4x the budget), and calls Heartbeat and GetTask with random
unknown tokens back to back: all at once, then each alone; the last row is the honest fleet again, for the
spread between two runs (ratios are against the first). Each row is a fresh server and fleet, measured
for {settings.seconds:g} s from the moment every honest client acts; a round's length counts from the
window's start at the earliest. A synchronous round samples {HONEST} of the online clients, so once the
attacker has called the server it is in most rounds' sample ("rounds sampling the attacker": rounds closed
in the window or open at its end). Once its update is refused or its upload cancelled for silence, its
place goes to the next honest client that asks for work, so the round need not wait for its deadline
(docs/security.md). The attacker shares the machine's two cores with the server and the fleet: its own
CPU, and the server's for refusing its calls, slow the fleet's training as well.

{training}

What the attacker's calls got (its own count, by status code; OK is an accepted update or an answered
call), and the server's `fedrl_updates_rejected_total` (every client, by reason):

{attacker}

{judged}
"""
    print(body)
    if args.only is None:
        write_section("attack", body)


if __name__ == "__main__":
    main()
