"""`fedrl aggregator`'s options: what is missing or unsafe is named before anything starts."""

from typer.testing import CliRunner

from fedrl.cli import app


def aggregator(*args):
    return CliRunner().invoke(app, ["aggregator", "--parent", "127.0.0.1:1", "--name", "eu", *map(str, args)])


def test_a_region_without_a_token_or_with_plain_text_off_loopback_is_refused(tmp_path):
    result = aggregator("--insecure", "--state-dir", tmp_path / "eu")
    assert result.exit_code == 2 and "no token" in result.output

    token = tmp_path / "eu.token"
    token.write_text("x" * 43)
    result = aggregator("--token-file", token, "--state-dir", tmp_path / "eu", "--listen", "0.0.0.0:0", "--insecure")
    assert result.exit_code == 2 and "0.0.0.0" in result.output
    assert not (tmp_path / "eu").exists()
