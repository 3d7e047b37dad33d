"""What the server and the agents write is private to their user: files 0600, folders 0700,
whatever the umask and whatever mode an older file had (a store holds every client's updates;
a device's folder holds its learner state, pending update and token)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrl.cli import app
from fedrl.server.config import load_server_config
from fedrl.server.coordinator import Coordinator
from fedrl.wire import disk
from fedrl.wire.records import Submission, Task


@pytest.fixture
def open_umask():
    """A permissive umask, as a careless service manager might leave it."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def _submit_a_round(coordinator: Coordinator, names: list[str]) -> None:
    for name in names:
        task = coordinator.task(name)
        assert isinstance(task, Task)
        delta = np.full(coordinator.dim, 0.01, np.float32)
        s = Submission(f"{name}-1", name, task.round, task.base_version, delta, 512, {"loss": 0.1})
        coordinator.submit(name, s)
    coordinator.tick()


def test_a_servers_state_is_private_even_in_a_folder_that_was_open(tmp_path, open_umask):
    # Prepare: a state folder made world-readable beforehand
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    config = load_server_config(None, ["experiment.federation.n_clients=2", "gate.enabled=false"])
    coordinator = Coordinator.open(config, state)
    names = ["a", "b"]
    for name in names:
        coordinator.add_client(name)
        coordinator.heartbeat(name, 0)

    # Execute: a round is trained, aggregated and deployed
    _submit_a_round(coordinator, names)
    coordinator.close()

    # Assert
    modes = _modes(state)
    assert coordinator.deployed_version == 1 and "models/v000001.safetensors" in modes
    assert {name: mode for name, mode in modes.items() if mode not in (0o600, 0o700)} == {}
    folders = {name for name in modes if (state / name).is_dir()}
    assert all(modes[name] == 0o700 for name in folders) and {".", "models", "updates"} <= folders


def test_a_durable_file_written_over_an_open_one_becomes_private(tmp_path, open_umask):
    # Prepare: an older file, and a leftover temporary file, both world-readable
    target = tmp_path / "pending.safetensors"
    target.write_bytes(b"old")
    target.chmod(0o644)
    tmp_file = target.with_name(target.name + ".tmp")
    tmp_file.write_bytes(b"cut short")
    tmp_file.chmod(0o666)

    # Execute
    disk.save_record(target, {"x": np.ones(3, np.float32)}, {"client_index": 0})

    # Assert
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert disk.load_record(target)[1] == {"client_index": 0}


def test_a_token_written_into_an_existing_open_file_becomes_private(tmp_path, open_umask):
    # Prepare: the operator points --token-file at a file that already exists, readable by all
    token_file = tmp_path / "dev0.token"
    token_file.write_text("old\n")
    token_file.chmod(0o644)

    # Execute
    result = CliRunner().invoke(
        app, ["fleet", "add-client", "dev0", "--state-dir", str(tmp_path / "srv"), "--token-file", str(token_file)]
    )

    # Assert
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token_file.read_text().strip()) >= 43
    assert stat.S_IMODE((tmp_path / "srv").stat().st_mode) == 0o700
