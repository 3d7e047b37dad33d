"""`fedrl fleet add-region` and `add-client --same-token`: enrolling a hierarchy's members."""

from typer.testing import CliRunner

from fedrl.cli import app
from fedrl.server.auth import hash_token
from fedrl.server.store import Store


def fleet(*args):
    return CliRunner().invoke(app, ["fleet", *map(str, args)])


def test_a_region_is_a_client_standing_for_its_devices(tmp_path):
    result = fleet(
        "add-region", "eu", "--devices", 500, "--state-dir", tmp_path / "root", "--token-file", tmp_path / "t"
    )
    assert result.exit_code == 0, result.output

    store = Store(tmp_path / "root")
    try:
        assert store.regions() == {"eu": 500}
        assert store.client_for_token((tmp_path / "t").read_text().strip())[0] == "eu"
    finally:
        store.close()
    assert fleet("add-region", "us", "--devices", 0, "--state-dir", tmp_path / "root").exit_code == 2


def test_a_device_enrolled_at_its_region_and_at_the_root_uses_one_token(tmp_path):
    token = tmp_path / "dev0.token"
    assert fleet("add-client", "dev0", "--state-dir", tmp_path / "eu", "--token-file", token).exit_code == 0

    result = fleet("add-client", "dev0", "--state-dir", tmp_path / "root", "--same-token", token)

    assert result.exit_code == 0 and "dev0 enrolled with the token in" in result.output
    store = Store(tmp_path / "root")
    try:
        assert store.token_names() == {hash_token(token.read_text().strip()): "dev0"}
    finally:
        store.close()


def test_a_guessable_or_taken_token_is_refused_by_name(tmp_path):
    short = tmp_path / "short"
    short.write_text("letmein\n")
    result = fleet("add-client", "dev0", "--state-dir", tmp_path / "root", "--same-token", short)
    assert result.exit_code == 2 and "a token of 7 characters is too easy to guess" in result.output

    token = tmp_path / "dev0.token"
    fleet("add-client", "dev0", "--state-dir", tmp_path / "root", "--token-file", token)
    result = fleet("add-client", "dev1", "--state-dir", tmp_path / "root", "--same-token", token)
    assert result.exit_code == 2 and "that token is another client's" in result.output
    empty = tmp_path / "empty"
    empty.write_text("")
    assert "is empty" in fleet("add-client", "dev2", "--state-dir", tmp_path / "root", "--same-token", empty).output


def test_fleet_status_tells_a_region_from_a_device(tmp_path, monkeypatch):
    from fedrl.cli.console import console

    monkeypatch.setattr(console, "width", 200)
    fleet("add-region", "eu", "--devices", 500, "--state-dir", tmp_path / "root", "--token-file", tmp_path / "t")
    fleet("add-client", "dev9", "--state-dir", tmp_path / "root", "--token-file", tmp_path / "d")

    result = fleet("status", "--state-dir", tmp_path / "root")

    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip().startswith(("eu", "dev9"))}
    assert "(region, <= 500 devices)" in rows["eu"] and "region" not in rows["dev9"]
