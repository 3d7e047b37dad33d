"""Policies on disk: the files fedrl's writers leave, read back by ``load_policy`` without torch,
and every way a source can be wrong, named in the error."""

import json
import sqlite3
import stat
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save, save_file

from fedrl.policy import Policy, load_policy
from fedrl.policy.card import CARD_KEY
from fedrl.policy.files import MissingCard, save_npz, save_safetensors, write_safetensors


def assert_same_policy(policy, case, version=7):
    assert isinstance(policy, Policy) and policy.version == version
    assert policy.params.tobytes() == case.params.tobytes()
    expected = Policy(case.card, case.params).predict(case.obs[:500])
    np.testing.assert_array_equal(policy.predict(case.obs[:500]), expected)


def server_state_dir(path, case, versions=(0, 1)):
    """A server's state: ``server.db`` (WAL, as the server keeps it) recording ``versions``, and
    their model files with strategy state beside the parameters; version v's parameters are ``params + v``."""
    (path / "models").mkdir(parents=True)
    db = sqlite3.connect(path / "server.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE versions(version INTEGER PRIMARY KEY, round INTEGER NOT NULL)")
    for version in versions:
        params = case.params + version
        card = case.card.with_params(params, version=version)
        strategy = {"strategy.momentum": np.ones(3, np.float32)}
        (path / "models" / f"v{version:06d}.safetensors").write_bytes(
            save_safetensors(path, params, card, extra=strategy)
        )
        db.execute("INSERT INTO versions VALUES (?, ?)", (version, version))
    db.commit()
    return db


def test_a_run_directory_gives_its_final_policy_from_named_tensors(tmp_path, cases):
    case = cases["pendulum"]
    data = save_safetensors(tmp_path / "final_policy.safetensors", case.params, case.card, named=True)
    (tmp_path / "final_policy.safetensors").write_bytes(data)

    assert_same_policy(load_policy(tmp_path), case)
    assert "actor.2.weight" in json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])


def test_an_agent_state_directory_gives_its_acting_policy_beside_its_own_metadata(tmp_path, cases):
    case = cases["cartpole"]
    data = save_safetensors(tmp_path, case.params, case.card, metadata={"fedrl_record": '{"version": 7}'})
    (tmp_path / "acting.safetensors").write_bytes(data)

    assert_same_policy(load_policy(tmp_path), case)


def test_a_server_state_directory_gives_its_newest_version_while_the_server_holds_the_db(tmp_path, cases):
    case = cases["dqn"]
    db = server_state_dir(tmp_path, case, versions=(1, 0))

    policy = load_policy(tmp_path)

    assert policy.version == 1 and policy.card.q_values
    np.testing.assert_array_equal(policy.params, case.params + 1)
    db.close()
    assert load_policy(tmp_path).version == 1  # and once the server has stopped


def test_npz_and_safetensors_files_round_trip_exactly(tmp_path, cases):
    case = cases["pendulum"]

    npz = save_npz(tmp_path / "policy.npz", case.params, case.card)
    written = write_safetensors(tmp_path / "policy.safetensors", case.params, case.card)

    for path in (npz, written):
        assert_same_policy(load_policy(path), case)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with np.load(npz, allow_pickle=False) as file:
        assert set(file.files) == {"card", *(name for name, _ in case.card.layout)}
    assert not list(tmp_path.glob("*.tmp"))


def test_a_card_without_a_digest_is_stamped_when_saved(tmp_path, cases):
    case = cases["cartpole"]
    card = case.card.__class__(**{**vars(case.card), "digest": ""})

    policy = load_policy(save_npz(tmp_path / "policy.npz", case.params, card))

    assert policy.card.digest == case.card.digest


def test_a_file_without_a_card_was_written_by_an_older_fedrl(tmp_path, cases):
    save_file({"params": cases["cartpole"].params}, tmp_path / "acting.safetensors")

    message = "acting.safetensors: no policy card: written by an older fedrl: run `fedrl export SOURCE`"
    with pytest.raises(MissingCard, match=message):
        load_policy(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p + 1, "do not match the card's digest"),
        (lambda p: p[:-1], "the card's layout holds 9155 parameters, the vector has 9154"),
        (lambda p: np.where(np.arange(p.size) == 3, np.nan, p).astype(np.float32), "NaN or infinite"),
    ],
    ids=["digest", "length", "nan"],
)
def test_parameters_that_do_not_fit_their_card_are_named_with_the_file(tmp_path, cases, change, message):
    case = cases["cartpole"]
    path = tmp_path / "policy.safetensors"
    path.write_bytes(save({"params": change(case.params)}, metadata={CARD_KEY: case.card.to_json()}))

    with pytest.raises(ValueError, match=f"^{path}: .*{message}"):
        load_policy(path)


def test_missing_or_misshapen_named_tensors_are_named(tmp_path, cases):
    case = cases["cartpole"]
    tensors = {name: case.params[where].reshape(shape) for name, (where, shape) in case.card.slices().items()}
    metadata = {CARD_KEY: case.card.to_json()}
    path = tmp_path / "final_policy.safetensors"

    path.write_bytes(save({k: v for k, v in tensors.items() if k != "critic.0.bias"}, metadata=metadata))
    with pytest.raises(ValueError, match="no tensor 'critic.0.bias' \\(nor one flat 'params'\\)"):
        load_policy(tmp_path)
    path.write_bytes(save({**tensors, "actor.0.bias": np.zeros(63, np.float32)}, metadata=metadata))
    with pytest.raises(ValueError, match=r"tensor 'actor.0.bias' has shape \(63,\), the card's layout says \(64,\)"):
        load_policy(tmp_path)


def test_sources_that_hold_no_policy_are_named(tmp_path, cases):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no policy here: expected final_policy.safetensors"):
        load_policy(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing.npz: no such file"):
        load_policy(tmp_path / "missing.npz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt: not a policy \(expected a .npz or .safetensors file"):
        load_policy(tmp_path / "notes.txt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        load_policy(tmp_path / "junk.safetensors")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="junk.npz: not a readable .npz file"):
        load_policy(tmp_path / "junk.npz")
    np.save(tmp_path / "array.npy", cases["cartpole"].params)
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    with pytest.raises(ValueError, match=r"array.npz: not a policy \(one array"):
        load_policy(tmp_path / "array.npz")


def test_a_server_state_directory_without_a_usable_version_is_named(tmp_path, cases):
    case = cases["cartpole"]
    server_state_dir(tmp_path / "fresh", case, versions=()).close()
    with pytest.raises(ValueError, match="server.db: the server has recorded no model version yet"):
        load_policy(tmp_path / "fresh")

    server_state_dir(tmp_path / "pruned", case).close()
    (tmp_path / "pruned" / "models" / "v000001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="v000001.safetensors: missing, yet .*server.db records version 1"):
        load_policy(tmp_path / "pruned")

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "server.db").write_text("not a database")
    with pytest.raises(ValueError, match="server.db: cannot read the server's versions"):
        load_policy(tmp_path / "broken")


def test_the_writer_refuses_extras_that_would_replace_the_policy(tmp_path, cases):
    case = cases["cartpole"]

    with pytest.raises(ValueError, match=r"would replace the policy's own: \['params'\]"):
        save_safetensors(tmp_path, case.params, case.card, extra={"params": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="do not match the card's digest"):
        save_safetensors(tmp_path, case.params + 1, case.card)


def test_loading_and_acting_import_neither_torch_nor_the_rest_of_fedrl(tmp_path, cases):
    case = cases["cartpole"]
    path = save_npz(tmp_path / "policy.npz", case.params, case.card)
    server_state_dir(tmp_path / "server", case).close()
    script = (
        "import sys, numpy as np, fedrl.policy\n"
        f"for source in ({str(path)!r}, {str(tmp_path / 'server')!r}):\n"
        "    p = fedrl.policy.load_policy(source)\n"
        "    p.predict(np.zeros(4)); p.predict(np.zeros((3, 4)), deterministic=False)\n"
        "heavy = {'torch', 'gymnasium', 'pydantic', 'yaml', 'grpc', 'onnx', 'onnxruntime'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith('fedrl.') and not m.startswith('fedrl.policy')))\n"
    )

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]", result.stderr


def test_a_file_that_names_a_network_never_makes_fedrl_import_or_call_it(tmp_path, cases, capfd):
    from dataclasses import replace

    from fedrl.policy.files import read_card
    from fedrl.policy.usercode import only_code

    case = cases["cartpole"]
    forged = replace(case.card, network="builtins:print")  # the digest covers the parameters, not the card
    save_npz(tmp_path / "forged.npz", case.params, forged)

    with pytest.raises(ValueError, match="a policy file never makes fedrl import code by itself"):
        load_policy(tmp_path / "forged.npz")
    with only_code(["builtins:print"]), pytest.raises(ValueError, match="returned NoneType, not a torch.nn.Module"):
        load_policy(tmp_path / "forged.npz")  # allowed by name: imported, and refused for what it returns

    assert read_card(tmp_path / "forged.npz").network == "builtins:print"
    assert capfd.readouterr().out == "4 2\n"  # called once: when the name was allowed, never before
