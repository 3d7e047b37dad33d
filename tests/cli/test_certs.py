"""``fedrl certs`` writes a development PKI that the TLS loaders accept."""

import stat

from typer.testing import CliRunner

from fedrl.cli import app
from fedrl.wire.tls import channel_credentials, server_credentials

runner = CliRunner()


def test_certs_writes_the_whole_set_with_private_keys_readable_by_the_owner_only(tmp_path):
    out = tmp_path / "pki"
    result = runner.invoke(app, ["certs", str(out), "--host", "10.0.0.5", "--client", "robot-1", "--client", "robot-2"])
    assert result.exit_code == 0, result.output
    names = {
        "ca.pem",
        "server.pem",
        "server.key",
        "client-robot-1.pem",
        "client-robot-1.key",
        "client-robot-2.pem",
        "client-robot-2.key",
    }
    assert {path.name for path in out.iterdir()} == names
    for key in out.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server_credentials(out / "server.pem", out / "server.key", client_ca=out / "ca.pem")
    channel_credentials(out / "ca.pem", out / "client-robot-1.pem", out / "client-robot-1.key")


def test_certs_refuses_to_overwrite_an_existing_set(tmp_path):
    assert runner.invoke(app, ["certs", str(tmp_path)]).exit_code == 0
    before = (tmp_path / "ca.pem").read_bytes()
    result = runner.invoke(app, ["certs", str(tmp_path)])
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert (tmp_path / "ca.pem").read_bytes() == before


def test_certs_rejects_a_client_name_that_is_not_a_safe_file_name(tmp_path):
    result = runner.invoke(app, ["certs", str(tmp_path), "--client", "../escape"])
    assert result.exit_code == 2
    assert "client name" in result.output
    assert not any(tmp_path.iterdir())
