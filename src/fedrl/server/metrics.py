"""The server's Prometheus metrics, the HTTP endpoint Prometheus scrapes them from, and the
health endpoint probes ask (``/healthz``).

Every ``ServerMetrics`` has its own ``CollectorRegistry`` rather than prometheus_client's
global one, so several servers in one process (as in the tests) each count their own.
Names carry the ``fedrl_`` prefix; counters end in ``_total``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from fedrl.experiment.dashboard import Status, dashboard_app

NAMESPACE = "fedrl"
ROUND_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)  # a round takes seconds to an hour


@dataclass(frozen=True)
class ServerMetrics:
    """The metrics a server updates as it runs, all in ``registry``."""

    registry: CollectorRegistry
    clients_connected: Gauge  # clients heard from within their heartbeat interval
    deployed_version: Gauge  # the global model version clients are told to run
    current_round: Gauge
    round_duration_seconds: Histogram  # from opening a round to aggregating it
    updates_accepted: Counter
    updates_rejected: Counter  # label reason: a wire.records.Reason value
    bytes_received: Counter  # label transport: grpc, mqtt
    bytes_sent: Counter  # label transport
    candidates_rejected: Counter  # aggregated models the evaluation gate refused to deploy
    privacy_epsilon: Gauge  # DP epsilon spent by the closed rounds (at pipeline.dp.delta); +Inf without DP

    @classmethod
    def create(cls) -> ServerMetrics:
        """A fresh set of metrics, at zero, in a registry of its own."""
        registry = CollectorRegistry()
        common = {"namespace": NAMESPACE, "registry": registry}
        return cls(
            registry=registry,
            clients_connected=Gauge(
                "clients_connected", "Clients heard from within their heartbeat interval.", **common
            ),
            deployed_version=Gauge("deployed_version", "Global model version clients are told to run.", **common),
            current_round=Gauge("current_round", "Round now open (or last closed).", **common),
            round_duration_seconds=Histogram(
                "round_duration_seconds",
                "Seconds from opening a round to aggregating it.",
                buckets=ROUND_BUCKETS_S,
                **common,
            ),
            updates_accepted=Counter("updates_accepted", "Client updates accepted.", **common),
            updates_rejected=Counter("updates_rejected", "Client updates rejected, by reason.", ["reason"], **common),
            bytes_received=Counter(
                "bytes_received", "Bytes received from clients, by transport.", ["transport"], **common
            ),
            bytes_sent=Counter("bytes_sent", "Bytes sent to clients, by transport.", ["transport"], **common),
            candidates_rejected=Counter(
                "candidates_rejected", "Aggregated models the evaluation gate refused.", **common
            ),
            privacy_epsilon=Gauge(
                "privacy_epsilon",
                "Differential-privacy epsilon spent by the closed rounds, at the configured delta; +Inf without DP.",
                **common,
            ),
        )


@dataclass(frozen=True)
class MetricsServer:
    """A running metrics and health endpoint (``http://HOST:PORT/metrics``, ``/healthz``); ``close()`` stops it."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on (the real one when it was started on port 0)."""
        return self.httpd.server_address[1]

    def close(self) -> None:
        """Stop serving and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


Health = Callable[[], tuple[bool, dict]]  # whether the server is healthy, and what to say about it


def _routes(metrics: ServerMetrics, health: Health) -> Callable:
    """The WSGI app: ``/healthz`` answers ``health()`` as JSON (200, or 503 when unhealthy);
    every other path is Prometheus' text format."""
    exposition = make_wsgi_app(metrics.registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/healthz":  # /metrics, and any other path
            return exposition(environ, start_response)
        healthy, facts = health()
        start_response("200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "application/json")])
        return [json.dumps(facts).encode()]

    return app


def serve_metrics(
    metrics: ServerMetrics,
    host: str = "127.0.0.1",
    port: int = 0,
    health: Health = lambda: (True, {"status": "ok"}),
    status: Status | None = None,
) -> MetricsServer:
    """Serve ``metrics`` in Prometheus' text format (``/metrics``), ``health`` for probes
    (``/healthz``) and, given ``status``, the live dashboard (``/``) over HTTP, from a daemon
    thread; port 0 picks a free port."""
    routes = _routes(metrics, health)
    app = routes if status is None else dashboard_app(status, fallback=routes)
    httpd = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="fedrl-metrics", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
