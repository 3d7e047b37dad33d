"""``fedrl server``: the coordinator behind gRPC, a Prometheus endpoint, and the round clock.

The process opens (or resumes) the coordinator in its state directory, serves it over gRPC,
serves metrics over HTTP, and calls ``tick`` a few times per second so rounds close on their
deadline. It writes ``server.json`` in the state directory with its pid and bound ports (port
0 picks free ones, which is how the tests start it). SIGTERM or SIGINT stop it cleanly;
``kill -9`` loses nothing that was acknowledged (see ``fedrl.server.store``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedrl.server.config import ServerConfig
from fedrl.server.coordinator import Coordinator
from fedrl.server.grpc_service import serve_grpc
from fedrl.server.log import log_event
from fedrl.server.metrics import ServerMetrics, serve_metrics

TICK_S = 0.2


@dataclass(frozen=True)
class ServeOptions:
    """Where and how to listen; the rest is in ``ServerConfig``."""

    state_dir: Path
    listen: str = "127.0.0.1:50051"
    metrics_listen: str | None = "127.0.0.1:9108"  # None: no metrics endpoint
    credentials: grpc.ServerCredentials | None = None  # None: plain text (loopback only, checked by the CLI)
    exit_when_finished: bool = False  # stop once the run is over and clients have had time to hear it


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _write_info(options: ServeOptions, port: int, metrics_port: int | None) -> None:
    info = {"pid": os.getpid(), "port": port, "metrics_port": metrics_port}
    tmp = options.state_dir / "server.json.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, options.state_dir / "server.json")


def _tick(coordinator: Coordinator) -> None:
    """One tick; an error is logged and the server keeps serving (the round stays open)."""
    try:
        coordinator.tick()
    except Exception as exc:  # noqa: BLE001 -- the server must outlive a failed aggregation
        log_event("tick_failed", level="error", error=f"{type(exc).__name__}: {exc}")


def run_server(config: ServerConfig, options: ServeOptions, stop: threading.Event) -> None:
    """Serve until ``stop`` is set (or, with ``exit_when_finished``, the run is over)."""
    metrics = ServerMetrics.create()
    coordinator = Coordinator.open(config, options.state_dir, metrics)
    server, port = serve_grpc(coordinator, options.listen, options.credentials, config.limits, metrics)
    http = serve_metrics(metrics, *_host_port(options.metrics_listen)) if options.metrics_listen else None
    _write_info(options, port, http.port if http else None)
    log_event("server_started", port=port, metrics_port=http.port if http else None,
              deployed_version=coordinator.deployed_version, state_dir=str(options.state_dir))
    grace_s = 3 * config.rounds.retry_s + 1.0  # a few task polls for agents to hear that the run is over
    finished_since = None
    try:
        while not stop.wait(TICK_S):
            _tick(coordinator)
            if options.exit_when_finished and coordinator.finished:
                finished_since = finished_since or time.monotonic()
                if time.monotonic() - finished_since > grace_s:
                    break
    finally:
        server.stop(grace=1.0).wait()
        if http:
            http.close()
        coordinator.close()
        log_event("server_stopped", deployed_version=coordinator.deployed_version)
