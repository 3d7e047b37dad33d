"""Secure aggregation over gRPC: one deployed round's wall time and bytes, against a plain round of
the same fleet in the same process.

A ``Coordinator`` is served by ``serve_grpc`` on loopback; N client threads, each with its own
``GrpcLink``, take the round's task and then either push a random update (plain) or run their half
of the protocol with it (``fedrl.edge.secure``: advertise, share, mask, unmask); the main thread
ticks the coordinator until the new version is deployed. Seconds are from the first task to the
new version; bytes are the server's ``fedrl_bytes_received_total`` and ``fedrl_bytes_sent_total``
for gRPC, per client, tasks and acknowledgements included (no model pulls). Devices poll a step
that has not closed every ``rounds.retry_s`` (0.05 s here), which sets part of the secure round's
time. Client and server share this machine's two cores.

    python benchmarks/secagg_deployed.py
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _report import machine, markdown_table, write_section

from fedrl.edge.grpc_link import GrpcLink
from fedrl.edge.pending import new_submission
from fedrl.edge.secure import run_secure_round
from fedrl.server.config import load_server_config
from fedrl.server.coordinator import Coordinator
from fedrl.server.grpc_service import serve_grpc
from fedrl.server.metrics import ServerMetrics
from fedrl.wire.records import Task

COMMAND = "python benchmarks/secagg_deployed.py"
FLEETS = (5, 10, 20)
NETWORKS = {"64x64": [64, 64], "256x256": [256, 256]}
REPEATS = 3  # the median of this many rounds per setting


def _coordinator(root: Path, n: int, hidden: list[int], secure: bool) -> tuple[Coordinator, ServerMetrics]:
    overrides = [
        f"experiment.learner.hidden={hidden}",
        f"experiment.federation.n_clients={n}",
        "experiment.federation.local_steps=64",
        "experiment.federation.stop_at_target=false",
        f"experiment.federation.rounds={REPEATS + 1}",
        "gate.enabled=false",
        "rounds.retry_s=0.05",
        "limits.rate_per_s=1000",
        "limits.burst=1000",
        f"experiment.pipeline.secure_aggregation.enabled={str(secure).lower()}",
    ]
    metrics = ServerMetrics.create()
    return Coordinator.open(load_server_config(None, overrides), root, metrics), metrics


def _client(address: str, name: str, token: str, coordinator: Coordinator, secure: bool, round_: int) -> None:
    link = GrpcLink(address, token, name, timeout_s=60)
    try:
        task = link.task()
        while not isinstance(task, Task) or task.round != round_:
            time.sleep(0.02)
            task = link.task()
        x = np.random.default_rng(int(name[1:])).uniform(-0.01, 0.01, coordinator.dim).astype(np.float32)
        if secure:
            config = coordinator.setup.config.pipeline.secure_aggregation
            run_secure_round(lambda step, payload: link.secure(task.round, step, payload), x, config, time.sleep)
        else:
            link.push(new_submission(name, task.round, task.base_version, x, 64, {}))
    finally:
        link.close()


def _bytes(metrics: ServerMetrics) -> tuple[float, float]:
    sample = metrics.registry.get_sample_value
    labels = {"transport": "grpc"}
    return sample("fedrl_bytes_received_total", labels) or 0.0, sample("fedrl_bytes_sent_total", labels) or 0.0


def measure(n: int, hidden: list[int], secure: bool) -> dict:
    """The median of ``REPEATS`` rounds: seconds, and bytes up and down per client."""
    with tempfile.TemporaryDirectory() as root:
        coordinator, metrics = _coordinator(Path(root) / "state", n, hidden, secure)
        tokens = {f"c{i}": coordinator.add_client(f"c{i}") for i in range(n)}
        server, port = serve_grpc(coordinator, "127.0.0.1:0", None, coordinator.config.limits, metrics)
        runs = []
        try:
            for round_ in range(1, REPEATS + 1):
                up0, down0 = _bytes(metrics)
                started = time.perf_counter()
                threads = [
                    threading.Thread(
                        target=_client, args=(f"127.0.0.1:{port}", name, token, coordinator, secure, round_)
                    )
                    for name, token in tokens.items()
                ]
                for thread in threads:
                    thread.start()
                while coordinator.deployed_version < round_:
                    coordinator.tick()
                    time.sleep(0.005)
                seconds = time.perf_counter() - started
                for thread in threads:
                    thread.join(60)
                up, down = _bytes(metrics)
                runs.append((seconds, (up - up0) / n, (down - down0) / n))
        finally:
            server.stop(grace=None)
            coordinator.close()
        seconds, up, down = sorted(runs)[len(runs) // 2]
        return {"n": n, "dim": coordinator.dim, "seconds": seconds, "up": up, "down": down}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    rows = []
    for label, hidden in NETWORKS.items():
        for n in FLEETS:
            plain, secure = measure(n, hidden, False), measure(n, hidden, True)
            rows.append(
                [
                    label,
                    f"{plain['dim']:,}",
                    n,
                    f"{plain['seconds']:.3f}",
                    f"{secure['seconds']:.3f}",
                    f"{secure['seconds'] / plain['seconds']:.1f}x",
                    f"{plain['up'] / 1e3:.1f}",
                    f"{secure['up'] / 1e3:.1f}",
                    f"{secure['up'] / plain['up']:.2f}x",
                    f"{secure['down'] / 1e3:.1f}",
                ]
            )
            print(" | ".join(map(str, rows[-1])), flush=True)
    table = markdown_table(
        [
            "network",
            "parameters",
            "clients",
            "plain round (s)",
            "secure round (s)",
            "secure / plain",
            "plain uplink per client (kB)",
            "secure uplink per client (kB)",
            "secure / plain",
            "secure downlink per client (kB)",
        ],
        rows,
    )
    body = f"""## Secure aggregation over gRPC: one deployed round

`{COMMAND}` ({machine()})

{__doc__.split(chr(10) + chr(10))[1]}

{table}

A plain round's time is one task call and one push per client; a secure round adds the four steps'
calls and the waits between them (every client's step must close before the next opens), and the
server's unmasking. Downlink under secure aggregation carries the roster and each client's sealed
shares, growing with the fleet; uplink is the masked input (4 bytes a parameter, as float32) plus
the keys and shares.
"""
    print(table)
    write_section("secagg-deployed", body)


if __name__ == "__main__":
    main()
