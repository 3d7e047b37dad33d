"""The command line, in process (typer's runner) and as a real process killed with SIGKILL."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import fedrl
from fedrl.cli import app
from fedrl.sim import run as runs
from fedrl.sim.rundir import ROUND_COLUMNS, RunDir

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["run"], ["envs"], ["eval"], ["plot"]])
def test_help_is_useful_on_its_own(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output.splitlines()) > 5


def test_envs_lists_every_family_and_its_parameters():
    result = runner.invoke(app, ["envs"])
    assert result.exit_code == 0
    for word in ("cartpole", "pendulum", "airquality", "length", "max_torque", "0.1 .. 0.9"):
        assert word in result.output


def test_run_writes_a_complete_run_directory_then_eval_and_plot_use_it(tmp_path, config_file):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(config_file), "--out", str(out), "--set", "federation.rounds=2"])
    assert result.exit_code == 0, result.output
    for name in (
        "config.yaml",
        "metrics.csv",
        "client_returns.csv",
        "metrics.sqlite",
        "summary.json",
        "final_policy.safetensors",
        "final_policy.json",
        "plots/returns.png",
        "plots/clients.png",
        "checkpoints/round_00002.safetensors",
        "checkpoints/round_00002.json",
    ):
        assert (out / name).exists(), name
    assert (out / "plots/returns.png").read_bytes()[:4] == b"\x89PNG"
    assert yaml.safe_load((out / "config.yaml").read_text())["federation"]["rounds"] == 2
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"round", "env_steps", "wall_s", "global_mean_return", "worst_client_return"} <= set(header)
    summary, last = json.loads((out / "summary.json").read_text()), RunDir(out).rounds()[-1]
    assert (summary["rounds"], summary["env_steps"]) == (2, last.env_steps) and last.env_steps > 0
    finished = runs.open_run(out)  # the final policy is the last round's, not the initial one
    assert finished.state.round == 2
    np.testing.assert_array_equal(finished.dir.load_policy(finished.setup), finished.state.params)
    assert not np.array_equal(finished.state.params, finished.setup.initial_params())
    assert len(RunDir(out).client_returns()) == 2 * 3
    # the run directory and its checkpoints are policies fedrl.load_policy runs, as the network does
    for source in (out, out / "checkpoints/round_00002.safetensors"):
        policy = fedrl.load_policy(source)
        assert policy.version == 2 and policy.params.tobytes() == finished.state.params.tobytes()

    metrics_before = (out / "metrics.csv").read_bytes()
    evaluated = runner.invoke(app, ["eval", str(out), "--clients", "0,2", "--episodes", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "worst client" in evaluated.output and "client" in evaluated.output.splitlines()[0]
    heldout = runner.invoke(app, ["eval", str(out), "--clients", "heldout:3", "--episodes", "1"])
    assert heldout.exit_code == 0 and "heldout clients" in heldout.output
    labels = re.findall(r"^\W+(\w+)\s+│", heldout.output, re.MULTILINE)
    assert labels[-3:] == ["h0", "h1", "h2"]  # none mistaken for trained client 0, 1 or 2
    assert runner.invoke(app, ["eval", str(out), "--clients", "7"]).exit_code == 2
    assert (out / "metrics.csv").read_bytes() == metrics_before  # evaluating changes nothing
    (out / "plots/returns.png").unlink()
    assert runner.invoke(app, ["plot", str(out)]).exit_code == 0
    assert (out / "plots/returns.png").exists()


def test_bad_config_is_one_clear_line(tmp_path, config_file):
    result = runner.invoke(app, ["run", str(config_file), "--set", "learner.lrr=1", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown key 'learner.lrr'" in result.output.replace("\n", " ")
    assert not (tmp_path / "x").exists()


def test_backend_flags_reach_the_config_and_an_unreachable_cluster_is_one_clear_line(tmp_path, config_file):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    out = tmp_path / "x"
    result = runner.invoke(app, ["run", str(config_file), "--backend", "ray", "--address", address, "--out", str(out)])
    assert result.exit_code == 2
    assert f"backend.address = '{address}': nothing answers there" in result.output.replace("\n", " ")
    assert not out.exists()
    bogus = runner.invoke(app, ["run", str(config_file), "--backend", "spark", "--out", str(out)])
    assert "backend.name = 'spark': allowed: inprocess, ray" in bogus.output.replace("\n", " ")


def test_resume_of_a_missing_run_and_reuse_of_a_run_directory_are_refused(tmp_path, config_file):
    assert runner.invoke(app, ["run", "--resume", str(tmp_path / "nothing")]).exit_code == 2
    out = tmp_path / "run"
    assert (
        runner.invoke(app, ["run", str(config_file), "--out", str(out), "--set", "federation.rounds=1"]).exit_code == 0
    )
    again = runner.invoke(app, ["run", str(config_file), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a run" in again.output


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_matches_an_unbroken_run(tmp_path, config_file):
    fedrl = [sys.executable, "-m", "fedrl.cli"]
    settings = ["--set", "federation.rounds=8", "--quiet"]
    subprocess.run(
        [*fedrl, "run", str(config_file), "--out", str(tmp_path / "unbroken"), *settings],
        check=True,
        capture_output=True,
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*fedrl, "run", str(config_file), "--out", str(killed), *settings],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "round_00003.json").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    subprocess.run([*fedrl, "run", "--resume", str(killed), "--quiet"], check=True, capture_output=True)

    def numbers(path):
        rows = np.array(RunDir(path).rounds(), dtype=np.float64)
        return np.nan_to_num(np.delete(rows, ROUND_COLUMNS.index("wall_s"), axis=1)), np.array(
            RunDir(path).client_returns()
        )

    a, b = numbers(tmp_path / "unbroken"), numbers(killed)
    assert len(a[0]) == 8
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert (killed / "summary.json").exists()


def test_version_is_printed():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fedrl {fedrl.__version__}"


def test_a_command_that_needs_the_training_stack_says_which_extra_to_install():
    # Prepare: an install without gymnasium, as `pip install fedrl[edge]` is
    script = (
        "import sys; sys.modules['gymnasium'] = None; sys.argv = ['fedrl', 'run']\n"
        "from fedrl.cli import run_cli; run_cli()"
    )

    # Execute
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    # Assert: one line naming the module and the extra, exit status 2, no traceback
    assert result.returncode == 2, result.stderr
    assert "needs gymnasium, which this install left out: pip install 'fedrl[train]'" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_broken_setter_ends_the_run_with_one_line_naming_the_users_file(tmp_path):
    (tmp_path / "my_setters.py").write_text("def set_length(env, row):\n    env.length = row['length'] / 0\n")
    config = {
        "env": {
            "family": "gym",
            "gym": {
                "id": "CartPole-v1",
                "setter": "my_setters:set_length",
                "params": {"length": {"standard": 0.5, "low": 0.1, "high": 0.9}},
            },
        },
        "federation": {"n_clients": 2, "rounds": 1, "local_steps": 64},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))

    result = runner.invoke(app, ["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--quiet"])

    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: setter my_setters:set_length raised ZeroDivisionError: float division by zero "
        f"at {tmp_path / 'my_setters.py'}:2"
    )


def test_a_family_without_a_solved_return_reports_no_target(tmp_path):
    config = {
        "env": {"family": "gym", "gym": {"id": "Pendulum-v1"}},  # Gymnasium gives Pendulum no reward_threshold
        "learner": {"name": "ppo", "n_envs": 2, "n_steps": 32},
        "federation": {"n_clients": 2, "rounds": 1, "local_steps": 64},
        "eval": {"episodes": 1, "heldout_clients": 0},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))

    result = runner.invoke(app, ["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--quiet"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())

    assert result.exit_code == 0, result.output
    assert re.search(r"target_return\s+│\s+no target", result.output) and "│ solved" not in result.output
    assert summary["target_return"] is None and "solved" not in summary


def test_without_a_terminal_the_progress_is_one_plain_line_per_round(config_file, tmp_path):
    result = runner.invoke(app, ["run", str(config_file), "--out", str(tmp_path / "out")])  # output is not a tty

    rounds = re.findall(r"^round (\d+)/3  steps [\d,]+  updates \d+/\d+  mean .* s$", result.output, re.MULTILINE)
    assert result.exit_code == 0, result.output
    assert rounds == ["1", "2", "3"] and "━" not in result.output
