"""examples/extending: a robust rule and a round logger of the user's own, plugged in by name
without editing fedrl, and the one-line errors when one does not fit."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrl.cli import app
from fedrl.core.robust import RobustConfig, reduce_stack, register_rule
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import load_config
from fedrl.experiment.setup import Setup

EXAMPLE = Path(__file__).parents[2] / "examples" / "extending"


def test_the_example_rule_and_logger_run_a_federation_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the rule is found beside the config; the logger on the path
    monkeypatch.setattr(sys, "path", [*sys.path, str(EXAMPLE)])
    out = tmp_path / "run"
    args = ["run", str(EXAMPLE / "cartpole_geomedian.yaml"), "--out", str(out), "--quiet"]

    result = CliRunner().invoke(app, [*args, "--set", "federation.rounds=2", "--callback", "jsonl_logger:JsonlLogger"])
    lines = [json.loads(line) for line in Path(f"{out}.rounds.jsonl").read_text().splitlines()]

    assert result.exit_code == 0, result.output
    assert [line["round"] for line in lines] == [1, 2] and "return/mean" in lines[0]


def test_the_geometric_median_shrugs_off_a_far_delta_that_drags_the_mean():
    sys.path.append(str(EXAMPLE))
    from geometric_median import geometric_median

    honest = np.random.default_rng(0).normal(0, 0.1, (9, 5)).astype(np.float32)
    stack = np.vstack([honest, np.full((1, 5), 1000.0, np.float32)])
    config = RobustConfig(rule="example:geometric_median")
    register_rule("example:geometric_median", geometric_median)

    delta = reduce_stack(config, stack, np.ones(10))

    assert np.abs(delta).max() < 0.5 < np.abs(stack.mean(0)).max()


def test_a_rule_that_cannot_be_loaded_or_returns_garbage_is_named(tmp_path):
    shutil.copy(EXAMPLE / "cartpole_geomedian.yaml", tmp_path / "run.yaml")
    (tmp_path / "geometric_median.py").write_text("def geometric_median(stack, weights):\n    return stack[0][:2]\n")
    register_rule("bad:rule", lambda stack, weights: stack[0][:2])

    with pytest.raises(ConfigError, match=r"strategy.robust.rule = 'nope:rule': cannot load robust rule 'nope:rule'"):
        _ = Setup(load_config(tmp_path / "run.yaml", ["strategy.robust.rule=nope:rule"])).strategy
    with pytest.raises(ValueError, match=r"rule bad:rule returned \(2,\) values .* it must return 5 finite numbers"):
        reduce_stack(RobustConfig(rule="bad:rule"), np.zeros((3, 5), np.float32), np.ones(3))


def test_devices_never_receive_a_rule_of_the_users(tmp_path):
    from fedrl.experiment.loading import read_from_server, to_yaml

    shutil.copy(EXAMPLE / "cartpole_geomedian.yaml", tmp_path / "run.yaml")
    shutil.copy(EXAMPLE / "geometric_median.py", tmp_path / "geometric_median.py")
    setup = Setup(load_config(tmp_path / "run.yaml"))

    sent = setup.for_devices()
    forged = to_yaml(setup.config)  # a server that sends the rule anyway

    assert sent.strategy.robust.rule == "mean" and sent.strategy.robust.rule_dir is None
    assert setup.strategy is not None and setup.config.strategy.robust.rule == "geometric_median:geometric_median"
    with pytest.raises(ConfigError, match="names a robust rule for the device to load"):
        read_from_server(forged)
