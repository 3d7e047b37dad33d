"""``fedrl server``: the coordinator behind gRPC or MQTT, a Prometheus endpoint, and the round clock.

The process opens (or resumes) the coordinator in its state directory, serves it over gRPC or
through an MQTT broker (``fedrl.server.mqtt_service``), serves metrics over HTTP, and calls
``tick`` a few times per second so rounds close on their deadline. It writes ``server.json`` in
the state directory with its pid, transport and bound ports (port 0 picks free ones, which is
how the tests start it). SIGTERM or SIGINT stop it cleanly;
``kill -9`` loses nothing that was acknowledged (see ``fedrl.server.store``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedrl.agents.runtime import tune_allocator
from fedrl.experiment.callbacks import Factory, TensorBoardCallback, make_callbacks
from fedrl.server.config import RoundConfig, ServerConfig, simulator_only_keys
from fedrl.server.coordinator import Coordinator
from fedrl.server.dashboard import ServerStatus
from fedrl.server.grpc_service import serve_grpc
from fedrl.server.log import log_event
from fedrl.server.metrics import ServerMetrics, serve_metrics
from fedrl.server.mqtt_service import MqttService
from fedrl.wire import disk
from fedrl.wire.mqtt_client import BrokerOptions

TICK_S = 0.2
STALE_S = 30.0  # /healthz says unhealthy once the loop has not ticked for this long
BUSY_S = 3600.0  # ... or once one tick (aggregating, evaluating a candidate) has taken this long


@dataclass(frozen=True)
class ServeOptions:
    """Where and how to listen; the rest is in ``ServerConfig``."""

    state_dir: Path
    listen: str = "127.0.0.1:50051"
    metrics_listen: str | None = "127.0.0.1:9108"  # None: no metrics endpoint
    credentials: grpc.ServerCredentials | None = None  # None: plain text (loopback only, checked by the CLI)
    exit_when_finished: bool = False  # stop once the run is over and every client in touch has heard it
    broker: BrokerOptions | None = None  # serve through this MQTT broker instead of gRPC on ``listen``
    init_from: Path | None = None  # a new run starts from the policy saved here (pre-trained)
    callbacks: tuple[Factory, ...] = ()  # factories of a user's round callbacks (fedrl server --callback)


@dataclass(frozen=True)
class Serving:
    """A started transport: what ``server.json`` says about it, and how to stop it."""

    info: dict
    stop: Callable[[], None]


def start_transport(
    coordinator: Coordinator, options: ServeOptions, config: ServerConfig, metrics: ServerMetrics
) -> Serving:
    """Serve ``coordinator`` through the broker when ``options`` names one, else over gRPC."""
    if options.broker is not None:
        service = MqttService(coordinator, options.broker, metrics)
        return Serving(
            {"transport": "mqtt", "broker": options.broker.address, "fleet": options.broker.fleet}, service.close
        )
    server, port = serve_grpc(coordinator, options.listen, options.credentials, config.limits, metrics)
    return Serving({"transport": "grpc", "port": port}, lambda: server.stop(grace=1.0))


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _write_info(options: ServeOptions, info: dict) -> None:
    disk.write_atomic(options.state_dir / "server.json", json.dumps({"pid": os.getpid(), **info}).encode())


def _tick(coordinator: Coordinator) -> None:
    """One tick; an error is logged and the server keeps serving (the round stays open)."""
    try:
        coordinator.tick()
    except Exception as exc:
        log_event("tick_failed", level="error", error=f"{type(exc).__name__}: {exc}")


class _Ending:
    """When a server that exits with its run may go: once every client still in touch has been told
    that the run is over and has had a few polls' time to fetch the final version; at the latest
    ``rounds.liveness_s`` after the run ended (a client silent that long is offline anyway). A client
    in touch was heard from within a few heartbeats or long polls: a device that moved on to another
    server of a hierarchy is not waited for."""

    def __init__(self, rounds: RoundConfig) -> None:
        self._grace_s = 3 * rounds.retry_s + 1.0
        self.in_touch_s = 2 * max(rounds.heartbeat_s, rounds.long_poll_s, rounds.retry_s) + 1.0
        self._patience_s = rounds.liveness_s + self._grace_s
        self._finished_at: float | None = None
        self._all_told_at: float | None = None

    def over(self, unaware: list[str]) -> bool:
        """Called while the run is finished, with the clients in touch not yet told so."""
        now = time.monotonic()
        self._finished_at = self._finished_at or now
        self._all_told_at = None if unaware else (self._all_told_at or now)
        if self._all_told_at is not None and now - self._all_told_at > self._grace_s:
            return True
        if now - self._finished_at > self._patience_s:
            log_event("exit_with_clients_unaware", level="warning", clients=unaware)
            return True
        return False


class Liveness:
    """When the server's loop last ticked: it is healthy while that is recent, or while a tick
    is still aggregating or evaluating a round (up to ``BUSY_S``) (``/healthz``)."""

    def __init__(self, coordinator: Coordinator, facts: Callable[[], dict] = dict) -> None:
        self._coordinator, self.ticked_at, self.ticking = coordinator, time.monotonic(), False
        self._facts = facts  # more for the probe to report (a region: when its parent last answered)

    def tick(self) -> None:
        """Run one tick of the server's loop, noting when it started and ended."""
        self.ticking, self.ticked_at = True, time.monotonic()
        try:
            _tick(self._coordinator)
        finally:
            self.ticking, self.ticked_at = False, time.monotonic()

    def __call__(self) -> tuple[bool, dict]:
        """Healthy, and the facts a probe or an operator wants: deployed version, whether finished."""
        since = time.monotonic() - self.ticked_at
        healthy = since < (BUSY_S if self.ticking else STALE_S)
        return healthy, {
            "status": "ok" if healthy else f"the server's loop has been stuck for {since:.0f} s",
            "deployed_version": self._coordinator.deployed_version,
            "finished": self._coordinator.finished,
            **self._facts(),
        }


def run_server(config: ServerConfig, options: ServeOptions, stop: threading.Event) -> None:
    """Serve until ``stop`` is set (or, with ``exit_when_finished``, the run is over)."""
    tune_allocator()  # a round stacks every update: reuse that memory rather than map it afresh each time
    metrics = ServerMetrics.create()
    coordinator = Coordinator.open(config, options.state_dir, metrics, init_from=options.init_from)
    try:
        coordinator.callbacks += make_callbacks(options.callbacks, options.state_dir)
        coordinator.callbacks.append(TensorBoardCallback(options.state_dir / "tensorboard", coordinator.open_round))
    except Exception:  # a callback that fails: close what was opened (store, callbacks)
        coordinator.close()
        raise
    serve_coordinator(coordinator, config, options, metrics, stop)


def serve_coordinator(
    coordinator: Coordinator,
    config: ServerConfig,
    options: ServeOptions,
    metrics: ServerMetrics,
    stop: threading.Event,
    role: str = "server",
    facts: Callable[[], dict] = dict,
) -> None:
    """Serve an opened ``coordinator`` (a server's, or a region's: ``role``) with its transport, metrics
    endpoint (``/healthz`` adds ``facts``) and round clock until ``stop`` is set (or, with
    ``exit_when_finished``, the run is over); closes it."""
    serving = http = None
    try:
        serving = start_transport(coordinator, options, config, metrics)
        liveness = Liveness(coordinator, facts)
        if options.metrics_listen:
            status = ServerStatus(coordinator, metrics)
            http = serve_metrics(metrics, *_host_port(options.metrics_listen), liveness, status)
    except Exception:  # a port in use: close what was opened (store, callbacks)
        if serving is not None:
            serving.stop()
        coordinator.close()
        raise
    info = {**serving.info, "metrics_port": http.port if http else None, "role": role}
    _write_info(options, info)
    if http:
        host = _host_port(options.metrics_listen)[0]
        base = f"http://{host}:{http.port}"
        info = {**info, "metrics": f"{base}/metrics", "health": f"{base}/healthz", "dashboard": f"{base}/"}
    log_event(
        f"{role}_started", **info, deployed_version=coordinator.deployed_version, state_dir=str(options.state_dir)
    )
    ignored = simulator_only_keys(config.experiment)
    if ignored:
        log_event("experiment_keys_ignored", level="warning", keys=ignored, reason="only the simulator uses them")
    ending = _Ending(config.rounds) if options.exit_when_finished else None
    try:
        while not stop.is_set():
            coordinator.wake.wait(TICK_S)  # a tick now and then, at once when an arrival makes the round due
            coordinator.wake.clear()
            if stop.is_set():
                break
            liveness.tick()
            if (
                ending is not None
                and coordinator.finished
                and ending.over(coordinator.unaware_of_finish(ending.in_touch_s))
            ):
                break
    finally:
        coordinator.release()
        serving.stop()
        if http:
            http.close()
        coordinator.close()
        log_event(f"{role}_stopped", deployed_version=coordinator.deployed_version)
