"""A run's plots: returns against rounds and env steps (and bytes when the run compresses), each
client's return as lines for a small fleet and as percentile bands for a large one."""

import subprocess
import sys

import matplotlib.pyplot as plt

from fedrl.experiment.loading import parse_config
from fedrl.sim import plots
from fedrl.sim import run as runs
from fedrl.sim.rundir import RunDir


def _run(tmp_path, tiny_config, **sections):
    config = parse_config({**tiny_config, **sections, "federation": {**tiny_config["federation"], "rounds": 2}})
    current = runs.start(config, tmp_path / "run")
    *_, (_, last) = current.rounds()
    runs.finish(current, last, plots.plot_run)
    return RunDir(tmp_path / "run")


def _drawn(monkeypatch):
    """The figures the plot functions draw, kept open for inspection."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    return figures


def test_returns_are_drawn_against_rounds_env_steps_and_for_a_compressed_run_bytes(tmp_path, tiny_config, monkeypatch):
    plain = _run(tmp_path / "plain", tiny_config)
    compressed = _run(
        tmp_path / "compressed", tiny_config, pipeline={"compression": {"sparsify": "topk", "ratio": 0.1}}
    )
    figures = _drawn(monkeypatch)

    plots.plot_returns(plain)
    plots.plot_returns(compressed)

    assert [[ax.get_xlabel() for ax in fig.axes] for fig in figures] == [
        ["round", "env steps"],
        ["round", "env steps", "uplink MB sent (compressed)"],
    ]
    assert all(fig.legends and not any(ax.get_legend() for ax in fig.axes) for fig in figures)  # legend below
    rounds_axis = figures[0].axes[0]
    assert all(float(t).is_integer() for t in rounds_axis.get_xticks())
    plt.close("all")


def test_a_large_fleet_is_drawn_as_percentile_bands_a_small_one_as_lines(tmp_path, tiny_config, monkeypatch):
    small = _run(tmp_path / "small", tiny_config)
    fleet = {**tiny_config["federation"], "n_clients": 30, "fraction": 0.2}
    large = _run(tmp_path / "large", {**tiny_config, "federation": fleet})
    figures = _drawn(monkeypatch)

    plots.plot_clients(small)
    plots.plot_clients(large)

    small_ax, large_ax = (fig.axes[0] for fig in figures)
    assert len(small_ax.get_lines()) == 3  # one per client
    assert [line.get_label() for line in large_ax.get_lines()] == ["median client", "worst client"]
    assert len(large_ax.collections) == 2  # the 10-90 and 25-75 bands
    plt.close("all")


def test_a_run_starts_without_importing_matplotlib():
    """matplotlib costs about 0.4 s of start-up; only the plots, after the rounds, need it."""
    code = "import sys, fedrl.cli, fedrl.sim.run; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
