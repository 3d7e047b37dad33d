"""Durable files, for run directories, the server's store and the edge agent alike: written whole
or not at all, so a power cut leaves no half file.

A record is one safetensors file: named arrays, plus a JSON header kept in the file's metadata,
so arrays and header change together in one rename. ``write_atomic`` writes a temporary file
beside the target, flushes it to the disk (fsync), renames it over the target and syncs the
folder, so after a crash the target holds either the old bytes or the new ones. A leftover
temporary file is never read, and the next write of the target replaces it.

Everything written here is private to the user that runs fedrl: files 0600 and the folders made
with ``private_dir`` 0700, whatever the umask and whatever mode an older file or folder had, since
a server's store holds every client's updates and a device's holds its learner state and token. Two writers of the
same file at once are the caller's to prevent (the server refuses a second upload of an update id
whose file is being written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from fedrl.policy.card import CARD_KEY, PolicyCard

_HEADER = "fedrl.header"
PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700


def write_atomic(path: Path, data: bytes | list[memoryview], fsync: bool = True) -> None:
    """Replace ``path`` by ``data`` (bytes, or buffers written one after the other, uncopied) in one
    step (tmp file, fsync, rename); with ``fsync=False`` the file survives a crash of the process but
    not of the machine."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)  # a leftover temporary file may have been made with another mode
    with os.fdopen(fd, "wb") as file:
        if isinstance(data, list):
            file.writelines(data)
        else:
            file.write(data)
        if fsync:
            file.flush()
            os.fsync(file.fileno())
    os.replace(tmp, path)
    if fsync:
        sync_folder(path.parent)  # the rename itself must reach the disk too


def private_dir(path: Path) -> Path:
    """``path`` as a folder (made with its parents if missing) that only its owner can enter."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    path.chmod(PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """``path`` made private: created empty with mode 0600 when missing, set to 0600 when not, so a
    program that opens it afterwards (SQLite) writes into a file no one else can read."""
    path = Path(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
    path.chmod(PRIVATE_FILE)
    return path


def save_record(
    path: Path, arrays: dict[str, np.ndarray], header: dict | None = None, card: PolicyCard | None = None
) -> None:
    """Write ``arrays`` (and the JSON-able ``header``, if any) atomically as one safetensors file;
    with ``card``, the file is also a policy any ``fedrl.policy.load_policy`` can run."""
    tensors = {name: np.require(array, requirements="C") for name, array in arrays.items()}  # 0-d stays 0-d
    metadata = {} if header is None else {_HEADER: json.dumps(header)}
    if card is not None:
        metadata[CARD_KEY] = card.to_json()
    write_atomic(path, save(tensors, metadata=metadata or None))


def load_record(path: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """The arrays and header of a record, or None when there is none; ``ValueError`` naming the
    file when it cannot be read as one."""
    if not Path(path).exists():
        return None
    try:
        with safe_open(str(path), framework="np") as file:
            header = json.loads((file.metadata() or {})[_HEADER])
            # a safe_open file has keys() but cannot be iterated
            return {name: file.get_tensor(name) for name in file.keys()}, header  # noqa: SIM118
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable record ({type(exc).__name__}: {exc})") from None


def remove(path: Path) -> None:
    """Delete ``path`` if it exists, durably."""
    path = Path(path)
    if path.exists():
        path.unlink()
        sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
