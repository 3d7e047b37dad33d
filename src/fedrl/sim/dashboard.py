"""What the live dashboard of ``fedrl run --dashboard`` shows (``experiment.dashboard``): the
return curve and time of every round so far, the updates used and rejected, and each simulated
client's return at the latest evaluation (the worst first, at most ``CLIENTS_SHOWN``)."""

from __future__ import annotations

import time

from fedrl.experiment.dashboard import finite_or_none
from fedrl.sim.run import Run

CLIENTS_SHOWN = 100
COLUMNS = [
    {"key": "name", "title": "client"},
    {"key": "return", "title": "return at the latest evaluation", "num": True},
    {"key": "round", "title": "evaluated in round", "num": True},
]
SERIES = [
    {"key": "mean", "label": "mean over clients"},
    {"key": "p10", "label": "10th percentile client"},
    {"key": "worst", "label": "worst client"},
]


def run_status(run: Run) -> dict:
    """The dashboard's ``api/status`` for a simulation writing ``run``'s directory."""
    rows = run.dir.rounds()
    curve = [
        {
            "round": r.round,
            "mean": finite_or_none(r.global_mean_return),
            "p10": finite_or_none(r.p10_client_return),
            "worst": finite_or_none(r.worst_client_return),
            "duration_s": finite_or_none(r.wall_s),
            "updates": r.n_updates,
        }
        for r in rows
    ]
    evaluated = [r for r in run.dir.client_returns() if finite_or_none(r.global_return) is not None]
    latest = max((r.round for r in evaluated), default=None)
    shown = [r for r in evaluated if r.round == latest]
    clients = [
        {"name": f"client {r.client}", "return": r.global_return, "round": r.round}
        for r in sorted(shown, key=lambda r: r.global_return)[:CLIENTS_SHOWN]
    ]
    config = run.setup.config
    last = rows[-1].round if rows else 0
    return {
        "kind": "simulation",
        "name": config.name,
        "deployed_version": last,
        "round": last,
        "rounds": config.federation.rounds,
        "finished": bool(rows) and last >= config.federation.rounds,
        "updates": {"accepted": sum(r.n_updates for r in rows), "rejected": sum(r.n_rejected for r in rows)},
        "now": time.time(),
        "stale_s": None,  # simulated clients have no last contact
        "series": SERIES,
        "curve": curve,
        "columns": COLUMNS,
        "clients": clients,
    }
