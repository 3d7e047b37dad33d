"""Round callbacks: every run writes TensorBoard event files that TensorBoard reads back with the
run's own numbers (resuming rewrites, never duplicates), and a user's callback plugs in with
``--callback module:factory``."""

import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from fedrl.cli import app
from fedrl.sim.rundir import RunDir

runner = CliRunner()


def _events(run_dir, run=""):
    events = EventAccumulator(str(run_dir / "tensorboard" / run), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def test_a_run_writes_tensorboard_events_with_its_own_numbers(config_file, tmp_path):
    out = tmp_path / "run"

    result = runner.invoke(app, ["run", str(config_file), "--out", str(out), "--quiet"])
    events, rows = _events(out), RunDir(out).rounds()

    assert result.exit_code == 0, result.output
    assert {"return/mean", "return/worst_client", "traffic/uplink_bytes", "round/updates"} <= set(
        events.Tags()["scalars"]
    )
    mean = events.Scalars("return/mean")
    assert [e.step for e in mean] == [r.round for r in rows]
    np.testing.assert_allclose([e.value for e in mean], [r.global_mean_return for r in rows], rtol=1e-6)
    assert [e.step for e in _events(out, "by_env_step").Scalars("return/mean")] == [r.env_steps for r in rows]
    assert [h.step for h in events.Histograms("clients/return")] == [1, 2, 3]
    assert events.Histograms("clients/return")[0].histogram_value.num == 3  # one return per client


def test_a_resumed_run_rewrites_its_later_rounds_once(config_file, tmp_path):
    out = tmp_path / "run"
    runner.invoke(app, ["run", str(config_file), "--out", str(out), "--quiet", "--set", "federation.rounds=2"])

    result = runner.invoke(app, ["run", "--resume", str(out), "--set", "federation.rounds=4", "--quiet"])

    assert result.exit_code == 0, result.output
    assert [e.step for e in _events(out).Scalars("return/mean")] == [1, 2, 3, 4]
    by_steps = [e.step for e in _events(out, "by_env_step").Scalars("return/mean")]
    assert by_steps == [r.env_steps for r in RunDir(out).rounds()]  # the env-step series survives the resume


def test_a_users_callback_gets_every_round_and_is_closed(config_file, tmp_path, monkeypatch):
    (tmp_path / "my_logger.py").write_text(
        "import json\n"
        "class Logger:\n"
        "    def __init__(self, run_dir):\n"
        "        self.file = open(f'{run_dir}.log', 'w')\n"
        "    def on_round(self, report):\n"
        "        self.file.write(json.dumps([report.round, report.scalars['return/mean']]) + '\\n')\n"
        "    def close(self):\n"
        "        self.file.write('closed\\n'); self.file.close()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    out = tmp_path / "run"

    result = runner.invoke(
        app, ["run", str(config_file), "--out", str(out), "--quiet", "--callback", "my_logger:Logger"]
    )
    lines = (tmp_path / "run.log").read_text().splitlines()

    assert result.exit_code == 0, result.output
    assert (
        lines[:-1] == [f"[{r.round}, {r.global_mean_return}]" for r in RunDir(out).rounds()] and lines[-1] == "closed"
    )


def test_a_callback_is_told_of_each_evaluation_and_each_new_version_when_it_asks(config_file, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    (tmp_path / "watcher.py").write_text(
        "class Watcher:\n"
        "    seen = []\n"
        "    def __init__(self, run_dir): pass\n"
        "    def on_round(self, report): pass\n"
        "    def on_evaluation(self, report): Watcher.seen.append(('evaluation', report.round))\n"
        "    def on_deploy(self, deployed): Watcher.seen.append(('deploy', deployed.version, deployed))\n"
        "    def close(self): pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    out = tmp_path / "run"

    result = runner.invoke(
        app,
        [
            "run",
            str(config_file),
            "--out",
            str(out),
            "--quiet",
            "--callback",
            "watcher:Watcher",
            "--set",
            "eval.every=2",
        ],
    )
    from watcher import Watcher

    assert result.exit_code == 0, result.output
    assert [event[:2] for event in Watcher.seen] == [
        ("deploy", 1),
        ("evaluation", 2),
        ("deploy", 2),
        ("evaluation", 3),  # the last round is always evaluated
        ("deploy", 3),
    ]
    final, last = load_file(str(out / "final_policy.safetensors")), Watcher.seen[-1][2]
    np.testing.assert_array_equal(
        last.params, last.card and np.concatenate([final[n].ravel() for n, _ in last.card.layout])
    )


def test_a_callback_that_cannot_be_loaded_stops_the_run_before_it_exists(config_file, tmp_path):
    out = tmp_path / "run"

    result = runner.invoke(app, ["run", str(config_file), "--out", str(out), "--callback", "no_such_module:Logger"])

    assert result.exit_code == 2
    assert result.output.startswith("error: cannot load --callback 'no_such_module:Logger': ModuleNotFoundError")
    assert not out.exists()


def test_when_one_callback_cannot_be_made_those_made_are_closed(tmp_path):
    from fedrl.experiment.callbacks import make_callbacks
    from fedrl.experiment.config import ConfigError

    closed = []

    class Fine:
        def __init__(self, run_dir):
            pass

        def on_round(self, report):
            pass

        def close(self):
            closed.append(True)

    def broken(run_dir):
        raise OSError("no such service")

    with pytest.raises(ConfigError, match=r"--callback my:broken: OSError: no such service"):
        make_callbacks([("my:Fine", Fine), ("my:broken", broken)], tmp_path)
    assert closed == [True]


def test_a_callback_that_raises_stops_the_run_in_one_line_naming_its_method_and_line(
    config_file, tmp_path, monkeypatch
):
    (tmp_path / "flaky.py").write_text(
        "class Flaky:\n"
        "    def __init__(self, run_dir): pass\n"
        "    def on_round(self, report): pass\n"
        "    def on_deploy(self, deployed):\n"
        "        raise ConnectionError('the tracking server is down')\n"
        "    def close(self): pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))

    result = runner.invoke(app, ["run", str(config_file), "--out", "run", "--quiet", "--callback", "flaky:Flaky"])

    assert result.exit_code != 0 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "callback Flaky.on_deploy raised ConnectionError: the tracking server is down at" in message
    assert "flaky.py:5" in message
