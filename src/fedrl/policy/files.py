"""Reading and writing policies: safetensors files that carry a card, ``.npz`` artifacts, and the
folders fedrl keeps them in.

The safetensors convention of every fedrl writer: the metadata key ``CARD_KEY`` holds the card's
JSON, and the parameters are either one flat tensor ``params`` (the server's model versions, an
agent's acting policy) or the named tensors of the card's layout (a run's final policy). Other
tensors (``strategy.*``, ...) are ignored. An ``.npz`` artifact holds the named tensors and the
card's JSON as a 0-d unicode array ``card``, and is read without pickle.

``load_policy`` reads any of them, or finds the policy in a folder:

    RUN_DIR/final_policy.safetensors      a run directory (``fedrl run``)
    STATE_DIR/acting.safetensors          an edge agent's state directory (``fedrl client``)
    STATE_DIR/server.db, models/          a server's state directory: the deployed (newest) version
"""

from __future__ import annotations

import io
import os
import sqlite3
import zipfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from fedrl.policy.card import CARD_KEY, PolicyCard, check_params
from fedrl.policy.runtime import Policy
from fedrl.policy.sb3 import from_sb3

RUN_POLICY = "final_policy.safetensors"
ACTING_POLICY = "acting.safetensors"
SERVER_DB = "server.db"
FLAT = "params"


class MissingCard(ValueError):
    """A readable policy file without a card: written by a fedrl older than policy cards."""


def save_safetensors(
    path: Path,
    params: np.ndarray,
    card: PolicyCard,
    extra: dict[str, np.ndarray] | None = None,
    named: bool = False,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """The bytes of a safetensors file holding ``params`` with ``card`` (for the caller to write to
    ``path``, which errors name): one flat tensor ``params``, or with ``named`` the layout's named
    tensors, plus the ``extra`` tensors and ``metadata`` entries the caller keeps beside them. A card
    without a digest is stamped with that of ``params``; ``ValueError`` when they do not fit."""
    card, params = _fitted(path, card, params)
    tensors = _named(card, params) if named else {FLAT: params}
    clashes = sorted(set(tensors) & set(extra or {}))
    if clashes or CARD_KEY in (metadata or {}):
        raise ValueError(f"{path}: extra tensors or metadata would replace the policy's own: {clashes or CARD_KEY}")
    tensors |= {name: np.ascontiguousarray(array) for name, array in (extra or {}).items()}
    return save(tensors, metadata={**(metadata or {}), CARD_KEY: card.to_json()})


def write_safetensors(path: Path, params: np.ndarray, card: PolicyCard, named: bool = False) -> Path:
    """Write ``params`` with ``card`` as a safetensors file at ``path``, atomically (see ``save_safetensors``)."""
    _write_atomic(Path(path), save_safetensors(path, params, card, named=named))
    return Path(path)


def save_npz(path: Path, params: np.ndarray, card: PolicyCard) -> Path:
    """Write ``params`` with ``card`` as an ``.npz`` artifact at ``path``, atomically: one array per
    tensor of the layout, and the card's JSON as the 0-d unicode array ``card``."""
    card, params = _fitted(path, card, params)
    buffer = io.BytesIO()
    np.savez(buffer, card=np.array(card.to_json()), **_named(card, params))
    _write_atomic(Path(path), buffer.getvalue())
    return Path(path)


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one step, readable by its owner only (tmp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover temporary file may have another mode
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename must reach the disk too
    finally:
        os.close(folder)


def load_policy(path: Path | str, network: Callable[..., Any] | None = None) -> Policy:
    """The policy in ``path``: an ``.npz`` artifact, a safetensors file with a card, or a run,
    agent or server state directory (see the module docstring). ``FileNotFoundError`` or
    ``ValueError`` naming the path and what is missing or wrong. A policy of a user's own torch
    network runs it with torch: ``network`` is its factory; without one, the name on the card is
    imported only when allowed (``fedrl.policy.usercode.only_code``), never on the file's say."""
    path = _policy_path(path)
    if path.suffix == ".npz":
        return _load_npz(path, network)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, network)
    if path.suffix == ".zip":  # a Stable-Baselines3 model (this one needs torch and stable-baselines3)
        return from_sb3(path)
    raise ValueError(
        f"{path}: not a policy (expected a .npz or .safetensors file, an SB3 model's .zip, or a folder that holds one)"
    )


def read_card(path: Path | str) -> PolicyCard:
    """The card of the policy ``load_policy(path)`` would load, read without building the policy
    (so without importing anything the card names); errors as ``load_policy``'s."""
    path = _policy_path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as file:
                text = str(file["card"][()]) if "card" in file.files else None
        else:
            with safe_open(str(path), framework="np") as file:
                text = (file.metadata() or {}).get(CARD_KEY)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError, SafetensorError) as exc:
        raise ValueError(f"{path}: not a readable policy file ({type(exc).__name__}: {exc})") from None
    return _card(path, text)


def _policy_path(path: Path | str) -> Path:
    """The policy file ``path`` names: itself, or the one its folder holds (``policy_file``)."""
    path = Path(path)
    if path.is_dir():
        path = policy_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def policy_file(folder: Path) -> Path:
    """The policy file of a run, agent or server state directory; ``ValueError`` if ``folder`` is none of them."""
    for name in (RUN_POLICY, ACTING_POLICY):
        if (folder / name).is_file():
            return folder / name
    if (folder / SERVER_DB).is_file():
        return _deployed_model(folder)
    raise ValueError(
        f"{folder}: no policy here: expected {RUN_POLICY} (a run directory), {ACTING_POLICY} "
        f"(an edge agent's state directory) or {SERVER_DB} (a server's state directory)"
    )


def _deployed_model(folder: Path) -> Path:
    """The model file of the newest version that ``folder/server.db`` records."""
    db = folder / SERVER_DB
    try:
        connection = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            (version,) = connection.execute("SELECT MAX(version) FROM versions").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise ValueError(f"{db}: cannot read the server's versions ({exc})") from None
    if version is None:
        raise ValueError(f"{db}: the server has recorded no model version yet")
    model = folder / "models" / f"v{version:06d}.safetensors"
    if not model.is_file():
        raise FileNotFoundError(f"{model}: missing, yet {db} records version {version} as deployed")
    return model


def _load_safetensors(path: Path, network: Callable[..., Any] | None) -> Policy:
    try:
        with safe_open(str(path), framework="np") as file:
            card = _card(path, (file.metadata() or {}).get(CARD_KEY))
            return _policy(path, card, set(file.keys()), file.get_tensor, network)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


def _load_npz(path: Path, network: Callable[..., Any] | None) -> Policy:
    try:
        file = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(file, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not a policy (one array, not an .npz archive of named arrays)")
    with file:
        text = str(file["card"][()]) if "card" in file.files else None
        return _policy(path, _card(path, text), set(file.files), file.__getitem__, network)


def _card(path: Path, text: str | None) -> PolicyCard:
    if text is None:
        raise MissingCard(
            f"{path}: no policy card: written by an older fedrl: run `fedrl export SOURCE` on its run directory "
            "(which rebuilds the card from config.yaml), or save it again with this fedrl"
        )
    try:
        return PolicyCard.from_json(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _policy(
    path: Path,
    card: PolicyCard,
    names: Collection[str],
    get: Callable[[str], np.ndarray],
    network: Callable[..., Any] | None = None,
) -> Policy:
    """The policy of ``card`` whose parameters are the tensors ``names`` that ``get`` reads."""
    try:
        return Policy(card, flat_params(card, names, get), network)
    except ValueError as exc:
        raise ValueError(f"{path}: {str(exc).removeprefix('policy: ')}") from None


def flat_params(card: PolicyCard, names: Collection[str], get: Callable[[str], np.ndarray]) -> np.ndarray:
    """The flat vector of ``card`` from the tensors ``names`` that ``get`` reads: the one flat
    tensor ``params``, or else the layout's named tensors; ``ValueError`` for one missing or misshapen."""
    if FLAT in names:
        return np.asarray(get(FLAT), dtype=np.float32).reshape(-1)
    parts = []
    for name, shape in card.layout:
        if name not in names:
            raise ValueError(f"no tensor {name!r} (nor one flat {FLAT!r}), which the card's layout names")
        tensor = np.asarray(get(name), dtype=np.float32)
        if tensor.shape != shape:
            raise ValueError(f"tensor {name!r} has shape {tensor.shape}, the card's layout says {shape}")
        parts.append(tensor.reshape(-1))
    return np.concatenate(parts)


def _fitted(path: Path, card: PolicyCard, params: np.ndarray) -> tuple[PolicyCard, np.ndarray]:
    """``card`` (stamped with the digest of ``params`` if it has none) and ``params`` as float32."""
    try:
        card = card if card.digest else card.with_params(params)
        return card, check_params(card, params)
    except ValueError as exc:
        raise ValueError(f"{path}: {str(exc).removeprefix('policy: ')}") from None


def _named(card: PolicyCard, params: np.ndarray) -> dict[str, np.ndarray]:
    return {name: params[where].reshape(shape) for name, (where, shape) in card.slices().items()}
