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
