"""What the live dashboard of ``fedrl server`` shows (``experiment.dashboard``): the deployed
version, the candidate and deployed returns and the time of every recent round, accepted and
rejected updates, and each client's last contact, acting version and accepted updates."""

from __future__ import annotations

import threading
import time

from fedrl.experiment.dashboard import finite_or_none
from fedrl.server.coordinator import Coordinator
from fedrl.server.metrics import ServerMetrics

ROUNDS_SHOWN = 200
COLUMNS = [
    {"key": "name", "title": "client"},
    {"key": "last_seen", "title": "last contact"},
    {"key": "acting_version", "title": "acting version", "num": True},
    {"key": "updates", "title": "updates accepted", "num": True},
    {"key": "token", "title": "token"},
]
SERIES = [{"key": "candidate", "label": "candidate (held-out)"}, {"key": "deployed", "label": "deployed version"}]


def rejected_updates(metrics: ServerMetrics) -> int:
    """Updates refused since the server started, whatever the reason."""
    return int(sum(s.value for m in metrics.updates_rejected.collect() for s in m.samples if s.name.endswith("_total")))


class ServerStatus:
    """The dashboard's ``api/status`` for a running server, computed at most once a second however
    many pages poll it, from what the coordinator holds (it writes nothing)."""

    def __init__(self, coordinator: Coordinator, metrics: ServerMetrics, max_age_s: float = 1.0) -> None:
        self.coordinator, self.metrics, self.max_age_s = coordinator, metrics, max_age_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict] | None = None

    def __call__(self) -> dict:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.max_age_s:
                self._cached = (now, server_status(self.coordinator, self.metrics))
            return self._cached[1]


def server_status(coordinator: Coordinator, metrics: ServerMetrics) -> dict:
    """The dashboard's ``api/status`` for a running server, now."""
    status = coordinator.status(ROUNDS_SHOWN, save=False)
    curve, deployed = [], None
    for r in sorted(status.rounds, key=lambda r: r.round):
        if r.closed_at is None:
            continue
        if r.promoted:
            deployed = r.candidate_return
        curve.append(
            {
                "round": r.round,
                "candidate": finite_or_none(r.candidate_return),
                "deployed": finite_or_none(deployed),
                "duration_s": r.closed_at - r.opened_at,
                "updates": r.n_updates,
            }
        )
    clients = [
        {
            "name": c.client,
            "last_seen": c.last_seen,
            "acting_version": c.acting_version,
            "updates": c.updates_accepted,
            "token": "revoked" if c.revoked_at is not None else "valid",
        }
        for c in status.clients
    ]
    config = coordinator.config
    return {
        "kind": "server",
        "name": config.experiment.name,
        "deployed_version": status.deployed_version,
        "round": status.round,
        "rounds": config.experiment.federation.rounds,
        "finished": status.finished,
        "updates": {"accepted": sum(c.updates_accepted for c in status.clients), "rejected": rejected_updates(metrics)},
        "now": time.time(),
        "stale_s": config.rounds.liveness_s,
        "series": SERIES,
        "curve": curve,
        "columns": COLUMNS,
        "clients": clients,
    }
