"""PNG plots of a run's metrics: the global and worst-client return per round, every client's
return per round, and -- for a run with differential privacy -- the return against the epsilon
spent so far."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedrl.sim.rundir import RoundRow, RunDir, column


def _finite(rows: list[RoundRow], name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = column(rows, "round"), column(rows, name)
    keep = np.isfinite(y)
    return x[keep], y[keep]


def plot_returns(run: RunDir, target: float | None = None) -> Path:
    """Global mean, 10th-percentile and worst-client return (and personalised, when run) per round."""
    rows = run.rounds()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, label in (
        ("global_mean_return", "global policy: mean over clients"),
        ("p10_client_return", "global policy: 10th percentile client"),
        ("worst_client_return", "global policy: worst client"),
        ("personalized_mean_return", "personalised: mean over clients"),
    ):
        x, y = _finite(rows, name)
        if len(x):
            ax.plot(x, y, marker=".", label=label)
    _label_returns(ax, target, "round", f"{run.path.name}: return of the global policy")
    return _save(fig, run.path / "plots" / "returns.png")


def _label_returns(ax, target: float | None, xlabel: str, title: str) -> None:
    """The target line, axis labels, grid and legend of a plot of returns."""
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_clients(run: RunDir) -> Path:
    """One line per client: its return under the global policy, per round."""
    rows = run.client_returns()
    rounds, ids, returns = column(rows, "round"), column(rows, "client"), column(rows, "global_return")
    fig, ax = plt.subplots(figsize=(7, 4))
    clients = np.unique(ids)
    for c in clients:
        mine = ids == c
        ax.plot(
            rounds[mine],
            returns[mine],
            linewidth=0.8,
            alpha=0.7 if len(clients) > 20 else 1.0,
            label=f"client {int(c)}" if len(clients) <= 10 else None,
        )
    ax.set_xlabel("round")
    ax.set_ylabel("evaluation return")
    ax.set_title(f"{run.path.name}: per-client return of the global policy")
    ax.grid(alpha=0.3)
    if 0 < len(clients) <= 10:
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, run.path / "plots" / "clients.png")


def plot_privacy(run: RunDir, target: float | None = None) -> Path | None:
    """Global mean and worst-client return against the DP epsilon spent by that round; None
    for a run without DP (its epsilon is infinite)."""
    rows = run.rounds()
    spent = column(rows, "epsilon")
    if not np.isfinite(spent).any():
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, label in (
        ("global_mean_return", "global policy: mean over clients"),
        ("worst_client_return", "global policy: worst client"),
    ):
        y = column(rows, name)
        keep = np.isfinite(y) & np.isfinite(spent)
        ax.plot(spent[keep], y[keep], marker=".", label=label)
    _label_returns(ax, target, "epsilon spent (client-level DP)", f"{run.path.name}: return against privacy spent")
    return _save(fig, run.path / "plots" / "privacy.png")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run: RunDir, target: float | None = None) -> list[Path]:
    """Every plot of a run; returns their paths."""
    privacy = plot_privacy(run, target)
    return [plot_returns(run, target), plot_clients(run)] + ([privacy] if privacy is not None else [])
