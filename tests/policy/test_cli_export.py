"""``fedrl export``: what it writes and prints, the card it rebuilds for a run written before policy
cards, and the one-line errors."""

import numpy as np
import pytest
import typer
from safetensors.numpy import save_file
from typer.testing import CliRunner

from fedrl.cli.export import export
from fedrl.experiment.loading import to_yaml
from fedrl.policy import load_policy
from fedrl.policy.files import save_safetensors

runner = CliRunner()
app = typer.Typer()
app.command()(export)


def run_directory(path, case, card=True):
    """A run directory as ``fedrl run`` writes it: config.yaml and the final policy as named tensors."""
    path.mkdir()
    (path / "config.yaml").write_text(to_yaml(case.setup.config))
    if card:
        data = save_safetensors(path, case.params, case.card, named=True)
        (path / "final_policy.safetensors").write_bytes(data)
    else:
        save_file(case.setup.net.spec.unflatten(case.params), path / "final_policy.safetensors")
    return path


def test_npz_export_of_a_run_writes_a_loadable_artifact_and_says_what_it_wrote(tmp_path, cases, monkeypatch):
    case = cases["cartpole"]
    run = run_directory(tmp_path / "run", case)
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(app, [str(run)])

    assert result.exit_code == 0, result.output
    written = tmp_path / "cartpole-v7.npz"
    assert f"wrote cartpole-v7.npz ({written.stat().st_size:,} bytes)" in result.output
    assert f"policy: cartpole version 7, {case.card.digest}" in result.output
    assert load_policy(written).params.tobytes() == case.params.tobytes()


def test_c_export_prints_its_flash_and_ram(tmp_path, cases):
    run = run_directory(tmp_path / "run", cases["cartpole"])

    result = runner.invoke(app, [str(run), "--format", "c", "--int8", "--out", str(tmp_path / "robot")])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "robot.c").exists() and (tmp_path / "robot.h").exists()
    assert "C footprint: 5,520 bytes flash (constant data), 520 bytes stack" in result.output


def test_a_run_written_before_policy_cards_gets_its_card_from_its_config(tmp_path, cases):
    case = cases["pendulum"]
    run = run_directory(tmp_path / "old-run", case, card=False)

    result = runner.invoke(app, [str(run / "final_policy.safetensors"), "--out", str(tmp_path / "p.npz")])

    assert result.exit_code == 0, result.output
    policy = load_policy(tmp_path / "p.npz")
    assert policy.card == case.card.with_params(case.params, version=None)
    np.testing.assert_allclose(policy.predict(case.obs), case.action, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nowhere"], "nowhere: no such file"),
        (["{tmp}/acting.safetensors"], "no policy card: written by an older fedrl"),
        (["{tmp}/run", "--format", "npz", "--int8"], "an npz artifact keeps the float32 parameters"),
    ],
    ids=["missing", "no-card", "npz-int8"],
)
def test_errors_are_one_line_and_exit_2(tmp_path, cases, args, message):
    case = cases["cartpole"]
    run_directory(tmp_path / "run", case)
    save_file({"params": case.params}, tmp_path / "acting.safetensors")

    result = runner.invoke(app, [arg.format(tmp=tmp_path) for arg in args])

    assert result.exit_code == 2
    assert "error:" in result.output and message in " ".join(result.output.split())
