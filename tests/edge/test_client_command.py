"""`fedrl client` refuses, in one line and before dialing, what it cannot run safely."""

import pytest
from typer.testing import CliRunner

from fedrl.cli import app

runner = CliRunner()
BASE = ["client", "--name", "dev-1", "--client-index", "0"]


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("secret-token\n")
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--server", "127.0.0.1:1", "--insecure"], "no token: give --token-file FILE"),
        (["--server", "127.0.0.1:1", "--insecure", "--token", "x", "--token-file", "TOKEN"], "give the token once"),
        (["--server", "127.0.0.1:1", "--token-file", "TOKEN"], "no TLS certificates given for 127.0.0.1:1"),
        (
            ["--server", "10.1.2.3:50051", "--insecure", "--token-file", "TOKEN"],
            "plain text refused for 10.1.2.3:50051",
        ),
        (
            ["--server", "127.0.0.1:1", "--token-file", "TOKEN", "--cert", "c.pem", "--key", "k.pem"],
            "--cert and --key need --ca",
        ),
        (["--server", "127.0.0.1:1", "--token-file", "TOKEN", "--ca", "missing.pem"], "missing.pem: no such file"),
        (["--server", "127.0.0.1:1", "--token-file", "TOKEN", "--ca", "TOKEN", "--insecure"], "give one of them"),
    ],
)
def test_unsafe_or_incomplete_settings_fail_with_one_line_and_exit_2(args, message, token_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDRL_TOKEN", raising=False)
    result = runner.invoke(app, [*BASE, *[str(token_file) if a == "TOKEN" else a for a in args]])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_an_empty_token_file_is_refused(tmp_path):
    empty = tmp_path / "token"
    empty.write_text("\n")
    result = runner.invoke(app, [*BASE, "--server", "127.0.0.1:1", "--insecure", "--token-file", str(empty)])
    assert result.exit_code == 2 and "is empty" in result.output


def test_a_device_config_file_gives_the_defaults_and_the_command_line_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDRL_TOKEN", raising=False)
    device = tmp_path / "device"
    device.mkdir()
    (device / "room.yaml").write_text(
        "server: 127.0.0.1:1\ninsecure: true\nname: room9\ntoken_file: room9.token\n"
        "env: thermostat:make_env\nenv_kwargs: {loss_per_h: 0.2}\ntrain_nice: 3\n"
    )

    from_file = runner.invoke(app, ["client", "--device-config", str(device / "room.yaml")])
    overridden = runner.invoke(
        app, ["client", "--device-config", str(device / "room.yaml"), "--token-file", str(tmp_path / "other")]
    )

    # the token file is the config's, relative to the config's folder, unless the command line names one
    assert from_file.exit_code == 2 and f"{device / 'room9.token'}" in " ".join(from_file.output.split())
    assert overridden.exit_code == 2 and f"{tmp_path / 'other'}:" in " ".join(overridden.output.split())


def test_an_unknown_key_in_the_device_config_is_named(tmp_path):
    (tmp_path / "room.yaml").write_text("name: room9\ntrain_nicee: 3\n")

    result = runner.invoke(app, ["client", "--device-config", str(tmp_path / "room.yaml")])

    assert result.exit_code == 2
    assert "unknown key 'train_nicee'" in " ".join(result.output.split())
