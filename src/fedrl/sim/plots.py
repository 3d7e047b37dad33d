"""PNG plots of a run's metrics: the global and worst-client return against rounds, env steps and
(compressed runs) bytes sent; every client's return per round (percentile bands for a large fleet);
and -- for a run with differential privacy -- the return against the epsilon spent so far. Legends
sit under the plots, where they cover no data."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from fedrl.sim.rundir import RoundRow, RunDir, column

RETURN_LINES = (
    ("global_mean_return", "global policy: mean over clients"),
    ("p10_client_return", "global policy: 10th percentile client"),
    ("worst_client_return", "global policy: worst client"),
    ("personalized_mean_return", "personalised: mean over clients"),
)
BAND_ABOVE = 20  # clients: more than this are drawn as percentile bands, not one line each


def _axes(rows: list[RoundRow]) -> list[tuple[str, np.ndarray]]:
    """The x axes a run's returns are drawn against: round, env steps, and the uplink bytes sent
    so far when the run compresses its updates."""
    axes = [("round", column(rows, "round")), ("env steps", column(rows, "env_steps"))]
    ratio, uplink = column(rows, "compression_ratio"), column(rows, "uplink_bytes")
    if np.isfinite(ratio).any() and np.nanmax(np.abs(ratio - 1.0)) > 1e-9 and np.isfinite(uplink).any():
        axes.append(("uplink MB sent (compressed)", np.nancumsum(uplink) / 1e6))
    return axes


def plot_returns(run: RunDir, target: float | None = None) -> Path:
    """Global mean, 10th-percentile and worst-client return (and personalised, when run), against the
    round, the env steps and, for a compressed run, the bytes sent."""
    rows = run.rounds()
    axes = _axes(rows)
    fig, panels = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 4), sharey=True, squeeze=False)
    for ax, (xlabel, x) in zip(panels[0], axes):
        for name, label in RETURN_LINES:
            y = column(rows, name)
            keep = np.isfinite(y) & np.isfinite(x)
            if keep.any():
                ax.plot(x[keep], y[keep], marker=".", label=label)
        _label(ax, target, xlabel)
    panels[0][0].set_ylabel("evaluation return")
    fig.suptitle(f"{run.path.name}: return of the global policy")
    _legend_below(fig, panels[0][0])
    return _save(fig, run.path / "plots" / "returns.png")


def _label(ax, target: float | None, xlabel: str) -> None:
    """The target line, x label (integer ticks for rounds) and grid of a plot of returns."""
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel(xlabel)
    if xlabel == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _legend_below(fig, ax) -> None:
    """The legend of ``ax`` under the figure, where it covers no data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06 + 0.05 * ((len(handles) - 1) // 3), 1, 1))


def plot_clients(run: RunDir) -> Path:
    """Each client's return under the global policy, per round: one line per client up to
    ``BAND_ABOVE`` clients, else the median with 25-75 and 10-90 percentile bands and the worst."""
    rows = run.client_returns()
    rounds, ids, returns = column(rows, "round"), column(rows, "client"), column(rows, "global_return")
    fig, ax = plt.subplots(figsize=(7, 4))
    clients = np.unique(ids)
    if len(clients) > BAND_ABOVE:
        _bands(ax, rounds, returns)
    else:
        for c in clients:
            mine = ids == c
            ax.plot(
                rounds[mine], returns[mine], linewidth=0.8, label=f"client {int(c)}" if len(clients) <= 10 else None
            )
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("evaluation return")
    ax.set_title(f"{run.path.name}: per-client return of the global policy ({len(clients)} clients)")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, run.path / "plots" / "clients.png")


def _bands(ax, rounds: np.ndarray, returns: np.ndarray) -> None:
    """Median, 25-75 and 10-90 percentile bands and the worst client, per round."""
    at = np.unique(rounds)
    q = np.array([np.nanpercentile(returns[rounds == r], (0, 10, 25, 50, 75, 90)) for r in at])
    ax.fill_between(at, q[:, 1], q[:, 5], alpha=0.2, color="C0", linewidth=0, label="10-90th percentile")
    ax.fill_between(at, q[:, 2], q[:, 4], alpha=0.35, color="C0", linewidth=0, label="25-75th percentile")
    ax.plot(at, q[:, 3], color="C0", label="median client")
    ax.plot(at, q[:, 0], color="C3", linewidth=0.8, linestyle=":", label="worst client")


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
    _label(ax, target, "epsilon spent (client-level DP)")
    ax.set_ylabel("evaluation return")
    ax.set_title(f"{run.path.name}: return against privacy spent")
    _legend_below(fig, ax)
    return _save(fig, run.path / "plots" / "privacy.png")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not fig.legends:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run: RunDir, target: float | None = None) -> list[Path]:
    """Every plot of a run; returns their paths."""
    privacy = plot_privacy(run, target)
    return [plot_returns(run, target), plot_clients(run)] + ([privacy] if privacy is not None else [])
