"""examples/extending: a robust rule and a round logger of the user's own, plugged in by name
without editing fedrl, and the one-line errors when one does not fit."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedrl.cli import app
from fedrl.core.robust import RobustConfig, reduce_stack, register_rule
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import load_config
from fedrl.experiment.setup import Setup
from fedrl.sim.rundir import RunDir

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


def test_the_example_network_trains_saves_loads_and_exports_as_the_users_module(tmp_path, monkeypatch):
    import onnxruntime

    from fedrl.policy import load_policy
    from fedrl.policy.export import export

    monkeypatch.chdir(tmp_path)  # the network is found beside the config while training
    out = tmp_path / "run"
    args = ["run", str(EXAMPLE / "cartpole_own_network.yaml"), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, [*args, "--set", "federation.rounds=2"])
    assert result.exit_code == 0, result.output
    exported = CliRunner().invoke(app, ["export", str(out), "--format", "onnx", "--out", str(tmp_path / "cli")])
    assert exported.exit_code == 0 and (tmp_path / "cli.onnx").is_file(), exported.output  # found as the run did
    monkeypatch.setattr(sys, "path", [*sys.path, str(EXAMPLE)])  # and by name on the path when loading
    from residual_net import make

    act = ["act", "--policy", str(out), "--env", "CartPole-v1", "--state-dir", "act", "--steps", "50"]
    refused, acted = CliRunner().invoke(app, act), CliRunner().invoke(app, [*act, "--allow-code", "residual_net:make"])
    assert refused.exit_code == 2 and "--allow-code residual_net:make" in " ".join(refused.output.split())
    assert acted.exit_code == 0 and "acted 50 steps" in acted.output, acted.output

    with pytest.raises(ValueError, match="a policy file never makes fedrl import code by itself"):
        load_policy(out)  # the name on the card is data, not an instruction
    policy = load_policy(out, network=make)
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    module = make(4, 2)
    weights = {name.removeprefix("actor."): v for name, v in zip(*_named(policy)) if name.startswith("actor.")}
    module.load_state_dict({k: torch_tensor(v) for k, v in weights.items()})
    onnx_file = export(policy, "onnx", tmp_path / "policy")[0]
    session = onnxruntime.InferenceSession(str(onnx_file))
    action, actor_out = session.run(None, {"obs": obs})

    assert policy.card.network == "residual_net:make" and policy.card.hidden == ()
    np.testing.assert_allclose(policy.logits_or_mean(obs), module(torch_tensor(obs)).detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(actor_out, policy.logits_or_mean(obs), atol=1e-5)
    np.testing.assert_array_equal(action, policy.predict(obs))
    assert policy.predict(obs[0]) == int(policy.predict(obs[:1])[0])
    with pytest.raises(ValueError, match="C99 export writes fedrl's own MLP only: export it to ONNX"):
        export(policy, "c", tmp_path / "policy")
    with pytest.raises(ValueError, match="--int8 quantises fedrl's own MLP"):
        export(policy, "onnx", tmp_path / "policy8", int8=True)
    monkeypatch.setitem(sys.modules, "torch", None)  # a device without torch
    with pytest.raises(ValueError, match=r"runs your network 'residual_net:make', which needs torch .* ONNX"):
        load_policy(out, network=make)


def _named(policy):
    """The card's tensor names and the policy's parameters split into them."""
    slices = policy.card.slices()
    return list(slices), [policy.params[where].reshape(shape) for where, shape in slices.values()]


def torch_tensor(array):
    import torch

    return torch.from_numpy(np.array(array))


def test_a_network_that_cannot_be_found_or_does_not_fit_stops_the_run_naming_it(tmp_path):
    shutil.copy(EXAMPLE / "cartpole_own_network.yaml", tmp_path / "run.yaml")
    shutil.copy(EXAMPLE / "geometric_median.py", tmp_path / "geometric_median.py")
    (tmp_path / "bad_net.py").write_text(
        "import torch\n\ndef make(obs_dim, n_out):\n    return torch.nn.Linear(obs_dim, 7)\n"
    )

    with pytest.raises(ConfigError, match=r"learner.network = 'nowhere:make': cannot load network 'nowhere:make'"):
        _ = Setup(load_config(tmp_path / "run.yaml", ["learner.network=nowhere:make"])).net
    with pytest.raises(ConfigError, match=r"learner.network = 'bad_net:make': maps a \(2, 4\) batch to \(2, 7\)"):
        _ = Setup(load_config(tmp_path / "run.yaml", ["learner.network=bad_net:make"])).net
    with pytest.raises(ConfigError, match="learner.network"):
        load_config(tmp_path / "run.yaml", ["learner.network=not a name"])


def test_devices_import_the_network_by_name_from_their_own_folder(tmp_path):
    shutil.copy(EXAMPLE / "cartpole_own_network.yaml", tmp_path / "run.yaml")
    setup = Setup(load_config(tmp_path / "run.yaml"))

    sent = setup.for_devices()

    assert setup.config.learner.network_dir == str(tmp_path.resolve())
    assert sent.learner.network == "residual_net:make" and sent.learner.network_dir is None


def test_the_example_learner_and_strategy_resume_exactly_from_a_checkpoint(tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    monkeypatch.chdir(tmp_path)  # the loss and the strategy are found beside the config
    config = str(EXAMPLE / "cartpole_own_learner_and_strategy.yaml")
    short = ["--set", "federation.rounds=2", "--set", "federation.target_return=1000", "--quiet"]
    straight = CliRunner().invoke(app, ["run", config, "--out", "straight", *short, "--set", "federation.rounds=3"])
    first = CliRunner().invoke(app, ["run", config, "--out", "resumed", *short])
    resumed = CliRunner().invoke(app, ["run", "--resume", "resumed", "--set", "federation.rounds=3", "--quiet"])

    assert straight.exit_code == first.exit_code == resumed.exit_code == 0, straight.output + resumed.output
    a, b = (load_file(f"{name}/final_policy.safetensors") for name in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)  # the velocity was restored too


def test_a_users_loss_or_strategy_that_fails_stops_the_run_in_one_line_naming_their_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(EXAMPLE / "cartpole_own_learner_and_strategy.yaml", "run.yaml")
    shutil.copy(EXAMPLE / "server_nesterov.py", "server_nesterov.py")
    Path("broken_loss.py").write_text("def spo(out, batch, options):\n    return out.value * options['missing']\n")
    Path("no_step.py").write_text("class Opt:\n    def init(self, params):\n        return {}\n")

    failed = CliRunner().invoke(
        app, ["run", "run.yaml", "--out", "a", "--quiet", "--set", "learner.name=broken_loss:spo"]
    )
    with pytest.raises(ConfigError, match=r"strategy.name = 'no_step:Opt': it returned Opt, which has no step method"):
        _ = Setup(load_config("run.yaml", ["strategy={name: 'no_step:Opt'}"])).strategy

    assert failed.exit_code != 0 and "Traceback" not in failed.output
    assert (
        "learner broken_loss:spo raised KeyError: 'missing' at" in failed.output and "broken_loss.py:2" in failed.output
    )


def test_devices_are_told_fedavg_for_a_users_strategy_and_find_the_loss_themselves(tmp_path):
    shutil.copy(EXAMPLE / "cartpole_own_learner_and_strategy.yaml", tmp_path / "run.yaml")
    setup = Setup(load_config(tmp_path / "run.yaml"))

    sent = setup.for_devices()

    assert sent.strategy.name == "fedavg" and sent.learner.name == "spo_loss:spo" and sent.learner.learner_dir is None
    assert setup.config.strategy.strategy_dir == setup.config.learner.learner_dir == str(tmp_path.resolve())


MLFLOW = Path(__file__).parents[2] / "build" / "test-tools" / "mlflow"
MLFLOW_RUN = """
import json, sys
sys.path.append({mlflow!r})  # after .venv's packages: MLflow's own copies never shadow fedrl's
sys.path.append({example!r})
from typer.testing import CliRunner
from fedrl.cli import app
import mlflow
result = CliRunner().invoke(app, ["run", {config!r}, "--out", {out!r}, "--quiet", "--set", "federation.rounds=2",
                                  "--callback", "mlflow_logger:MLflowLogger"])
client = mlflow.MlflowClient()
(run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "return/mean")]
versions = [m.value for m in client.get_metric_history(run.info.run_id, "deploy/version")]
path = client.download_artifacts(run.info.run_id, "policy.npz", {out!r} + "-artifact")
print(json.dumps({{"exit": result.exit_code, "output": result.output, "artifacts": artifacts,
                  "history": history, "versions": versions, "policy": path}}))
"""


def test_the_example_mlflow_logger_records_every_round_and_the_last_version(tmp_path):
    import json
    import os
    import subprocess

    from fedrl.policy import load_policy

    assert (MLFLOW / "mlflow").is_dir(), f"mlflow is missing: `make test-tools` installs it into {MLFLOW}"
    out = tmp_path / "run"
    script = MLFLOW_RUN.format(
        mlflow=str(MLFLOW), example=str(EXAMPLE), config=str(EXAMPLE / "cartpole_geomedian.yaml"), out=str(out)
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    found = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else pytest.fail(done.stderr[-2000:])

    assert found["exit"] == 0, found["output"]
    rows = RunDir(out).rounds()
    assert found["history"] == [[r.round, pytest.approx(r.global_mean_return)] for r in rows]
    assert found["versions"] == [1.0, 2.0] and found["artifacts"] == ["policy.npz"]
    policy = load_policy(found["policy"])
    assert policy.version == 2
    np.testing.assert_array_equal(policy.params, load_policy(out).params)


@pytest.mark.parametrize(
    ("forged", "message"),
    [
        (
            {"strategy": {"name": "subprocess:run", "options": {"args": ["touch", "x"]}}},
            "names a strategy for the device",
        ),
        ({"learner": {"name": "ppo", "network": "residual_net:make", "network_dir": "/tmp"}}, r"folders .*network_dir"),
        ({"learner": {"name": "spo_loss:spo", "learner_dir": "/srv/code"}}, r"folders .*learner.learner_dir"),
    ],
    ids=["strategy", "network folder", "loss folder"],
)
def test_a_device_refuses_a_strategy_or_a_code_folder_the_server_names(forged, message):
    from fedrl.experiment.loading import read_from_server

    with pytest.raises(ConfigError, match=message):
        read_from_server(yaml.safe_dump({"seed": 1, **forged}))
