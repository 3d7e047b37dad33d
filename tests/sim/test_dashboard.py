"""The live dashboard of a simulation (``fedrl run --dashboard``): the page and the status it polls."""

import json
import re
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from fedrl.cli import app
from fedrl.experiment.dashboard import Dashboard
from fedrl.experiment.loading import parse_config
from fedrl.sim import run as runs
from fedrl.sim.dashboard import run_status
from fedrl.sim.rundir import RunDir


def test_the_status_follows_the_run_round_by_round(tmp_path, tiny_config):
    current = runs.start(parse_config(tiny_config), tmp_path / "run")
    live = Dashboard(lambda: run_status(current))
    try:
        seen = []
        for _ in current.rounds():
            status = json.loads(urllib.request.urlopen(live.url + "api/status", timeout=5).read())
            seen.append((status["round"], [r["round"] for r in status["curve"]], status["finished"]))
        page = urllib.request.urlopen(live.url, timeout=5).read().decode()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(live.url + "nothing", timeout=5)
    finally:
        live.close()

    assert seen == [(1, [1], False), (2, [1, 2], False), (3, [1, 2, 3], True)]
    last = RunDir(tmp_path / "run").rounds()[-1]
    assert status["curve"][-1]["mean"] == pytest.approx(last.global_mean_return)
    returns = [c["return"] for c in status["clients"]]
    assert len(returns) == 3 and returns == sorted(returns)  # the worst client first
    assert "<title>fedrl dashboard</title>" in page and missing.value.code == 404


def test_fedrl_run_serves_the_dashboard_while_it_runs(config_file, tmp_path):
    result = CliRunner().invoke(
        app, ["run", str(config_file), "--out", str(tmp_path / "run"), "--quiet", "--dashboard", "127.0.0.1:0"]
    )

    assert result.exit_code == 0, result.output
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/$", result.output, re.MULTILINE)
