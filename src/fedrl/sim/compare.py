"""Comparing runs across seeds, as RL results should be compared (``fedrl compare``).

Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice" (NeurIPS
2021, the rliable library): a handful of seeds is too few for a mean, so each group of runs is
summarised by its interquartile mean (the mean of the middle half: with four seeds or more, robust to
one lucky or failed seed; below four it is the plain mean) with a 95 % percentile-bootstrap
confidence interval over its runs, and learning curves
are drawn as the IQM across seeds with the same interval as a band. Federated runs add fairness:
the worst client's and the 10th-percentile client's return under the final global policy.

Runs are grouped by their experiment config without its seed, so every seed of one setting is one
group, and each group is labelled by the config keys that tell the groups apart
(``strategy.name=fedprox``), or by its experiment name when only one setting is compared.
The bootstrap draws from a fixed seed: the same runs give the same table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedrl.experiment.loading import dotted
from fedrl.sim.rundir import RunDir

BOOTSTRAP_REPS = 2000
CURVE_POINTS = 50


class RunResult(NamedTuple):
    """What one run directory says about its run."""

    path: Path
    config: dict[str, Any]  # the resolved experiment config, as the run wrote it
    final_mean: float  # the last evaluated round's mean return over the training clients
    final_worst: float
    final_p10: float
    heldout_mean: float  # NaN without held-out clients
    steps_to_target: float  # env steps at the first evaluation at or above the target (confirmed, when the
    # run confirms crossings: eval.confirm_episodes); NaN if never
    solved: bool | None  # None: no target
    target: float | None  # the return the run counted as solved
    env_steps: np.ndarray  # the learning curve: env steps at each evaluated round ...
    returns: np.ndarray  # ... and the mean return there


class GroupSummary(NamedTuple):
    """One setting over its seeds: each figure an IQM with its 95 % bootstrap interval."""

    label: str
    runs: int
    solved: str  # "3/5", or "-" without a target
    final_mean: tuple[float, float, float]  # (IQM, low, high)
    final_worst: tuple[float, float, float]
    final_p10: tuple[float, float, float]
    heldout_mean: tuple[float, float, float]
    steps_to_target: float  # median over the runs that reached the target; NaN if none did


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """The interquartile mean along ``axis``: the mean after dropping the lowest and highest
    quarter (``floor(n / 4)`` values each side, as ``scipy.stats.trim_mean(x, 0.25)``)."""
    values = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = values.shape[axis]
    cut = n // 4
    return np.take(values, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def bootstrap_iqm(values: Sequence[float], reps: int = BOOTSTRAP_REPS, seed: int = 0) -> tuple[float, float, float]:
    """``(IQM, low, high)``: the IQM of ``values`` and its 95 % percentile-bootstrap interval,
    resampling the runs with replacement ``reps`` times; NaNs (runs without the figure) left out."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return (float("nan"),) * 3
    draws = x[np.random.default_rng(seed).integers(0, x.size, (reps, x.size))]
    low, high = np.percentile(iqm(draws, axis=1), [2.5, 97.5])
    return float(iqm(x)), float(low), float(high)


def read_run(path: Path) -> RunResult:
    """The results of the run directory ``path``; ``ValueError`` naming it when it holds no
    evaluated round (or no run)."""
    path = Path(path)
    config_file, summary_file = path / "config.yaml", path / "summary.json"
    if not config_file.is_file():
        raise ValueError(f"{path}: not a run directory (no config.yaml)")
    rows = [r for r in RunDir(path).rounds() if r.global_mean_return is not None and np.isfinite(r.global_mean_return)]
    if not rows:
        raise ValueError(f"{path}: no evaluated round yet")
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    config = yaml.safe_load(config_file.read_text())
    target = summary.get("target_return")
    steps = np.array([r.env_steps for r in rows], dtype=np.float64)
    returns = np.array([r.global_mean_return for r in rows], dtype=np.float64)
    confirmed = np.array([np.nan if r.confirmed_return is None else r.confirmed_return for r in rows], dtype=float)
    checked = config.get("eval", {}).get("confirm_episodes", 0) and config.get("federation", {}).get("stop_at_target")
    crossing = np.minimum(returns, confirmed) if checked else returns  # NaN (unchecked) never counts then
    reached = np.flatnonzero(crossing >= target) if target is not None else np.array([], int)
    last = rows[-1]
    return RunResult(
        path=path,
        config=config,
        final_mean=float(last.global_mean_return),
        final_worst=float(last.worst_client_return),
        final_p10=float(last.p10_client_return),
        heldout_mean=float(summary.get("heldout_mean_return", float("nan"))),
        steps_to_target=float(steps[reached[0]]) if reached.size else float("nan"),
        solved=None if target is None else bool(summary.get("solved", reached.size > 0)),
        target=target,
        env_steps=steps,
        returns=returns,
    )


def group_runs(runs: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """Runs grouped by their config without its seed, each group labelled by the keys whose values
    tell the groups apart -- those every group's config has, and those whose value varies among the
    groups that have them (``server_lr``, not a ``beta1`` only some have and all share) -- or its
    experiment name when there is one group; in the order first seen."""
    groups: dict[str, list[RunResult]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for run in runs:
        setting = {k: v for k, v in dotted(run.config).items() if k != "seed"}
        key = json.dumps(setting, sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
        settings[key] = setting
    if len(groups) == 1:
        (key,) = groups
        return {str(settings[key].get("name", "runs")): groups[key]}
    keys = sorted({k for s in settings.values() for k in s})
    differing = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings.values()}) > 1]
    # keys every group has tell them apart (strategy.name); those only some have follow from them (momentum),
    # unless the shared keys alone leave two groups with one label (fedadam at two learning rates)
    own = [k for k in differing if k != "name"] or differing
    shared = [k for k in own if all(k in s for s in settings.values())]
    # of the keys only some groups have, those whose value varies among them (server_lr, not beta1)
    varying = [k for k in own if len({json.dumps(s[k], default=str) for s in settings.values() if k in s}) > 1]
    both = [k for k in own if k in shared or k in varying]
    for shown in (both, own, differing):
        labels = [", ".join(f"{k}={settings[key][k]}" for k in shown if k in settings[key]) for key in groups]
        if shown and len(set(labels)) == len(labels) and all(labels):
            break
    else:  # nothing tells them apart by value (a key null in one config, absent in another): number them
        labels = [f"{label or 'setting'} #{i}" for i, label in enumerate(labels, 1)]
    return dict(zip(labels, groups.values()))


def summarize(groups: dict[str, list[RunResult]]) -> list[GroupSummary]:
    """One ``GroupSummary`` per group."""
    out = []
    for label, runs in groups.items():
        solved = [r.solved for r in runs if r.solved is not None]
        steps = [r.steps_to_target for r in runs if np.isfinite(r.steps_to_target)]
        out.append(
            GroupSummary(
                label=label,
                runs=len(runs),
                solved=f"{sum(solved)}/{len(solved)}" if solved else "-",
                final_mean=bootstrap_iqm([r.final_mean for r in runs]),
                final_worst=bootstrap_iqm([r.final_worst for r in runs]),
                final_p10=bootstrap_iqm([r.final_p10 for r in runs]),
                heldout_mean=bootstrap_iqm([r.heldout_mean for r in runs]),
                steps_to_target=float(np.median(steps)) if steps else float("nan"),
            )
        )
    return out


def curve(runs: Sequence[RunResult], points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(env steps, IQM, (2, points) interval)`` across ``runs`` on a common grid up to the
    longest run's last step: each run's curve held at its last evaluation between evaluations and
    after its end (a run stopped at its target keeps its final return)."""
    end = max(r.env_steps[-1] for r in runs)
    start = max(r.env_steps[0] for r in runs)
    grid = np.linspace(start, end, points) if end > start else np.array([end], dtype=np.float64)
    at = np.stack([r.returns[np.searchsorted(r.env_steps, grid, side="right") - 1] for r in runs], axis=1)
    stats = [bootstrap_iqm(row) for row in at]
    return grid, np.array([s[0] for s in stats]), np.array([[s[1] for s in stats], [s[2] for s in stats]])


def as_records(summaries: Sequence[GroupSummary]) -> list[dict[str, Any]]:
    """The summaries as JSON-ready records: each figure a list, a figure no run measured null."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return None if isinstance(value, float) and not np.isfinite(value) else value

    return [{key: plain(value) for key, value in s._asdict().items()} for s in summaries]


def markdown(summaries: Sequence[GroupSummary]) -> str:
    """The comparison as a Markdown table."""
    head = (
        "| setting | runs | solved | final mean return (IQM [95% CI]) | worst client | 10th-percentile client "
        "| held-out mean | env steps to target (median) |\n|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {s.label} | {s.runs} | {s.solved} | {fmt(s.final_mean)} | {fmt(s.final_worst)} | {fmt(s.final_p10)} "
        f"| {fmt(s.heldout_mean)} | {'-' if not np.isfinite(s.steps_to_target) else f'{s.steps_to_target:,.0f}'} |\n"
        for s in summaries
    )


def fmt(figure: tuple[float, float, float]) -> str:
    """``IQM [low, high]``, or ``-`` when no run measured it."""
    value, low, high = figure
    return "-" if not np.isfinite(value) else f"{value:.1f} [{low:.1f}, {high:.1f}]"


def plot_comparison(groups: dict[str, list[RunResult]], path: Path, target: float | None = None) -> Path:
    """Learning curves, one per group: the IQM across its seeds against env steps, with the 95 %
    bootstrap interval as a band; the legend below the axes so it covers no curve."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for label, runs in groups.items():
        steps, middle, band = curve(runs)
        (line,) = ax.plot(steps, middle, label=f"{label} ({len(runs)} runs)")
        ax.fill_between(steps, band[0], band[1], color=line.get_color(), alpha=0.2, linewidth=0)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("env steps (all clients)")
    ax.set_ylabel("mean return, IQM across seeds")
    ax.set_title("global policy's mean return; band: 95% bootstrap CI")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the whole legend, however long its labels
    plt.close(fig)
    return path
