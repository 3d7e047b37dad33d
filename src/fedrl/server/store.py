"""The server's durable state: SQLite (WAL) for records, safetensors files for model versions.

Layout of a state directory::

    server.db                  clients (token hashes only), versions, rounds (with their uplink bytes
                               and the DP epsilon spent), accepted updates, meta
    models/v000012.safetensors the params of version 12 and the strategy state that produced it
    rejected/r000031.safetensors a candidate the evaluation gate refused (kept for inspection)
    updates/<sha256 of id>.f32 the delta (and control delta) of an accepted update of an open round

Crash safety. An update's vector is written to its file (fsynced under ``durability: fsync``)
and then its record is committed, before its acknowledgement is returned: an acknowledged
update is on disk. Under ``durability: fsync`` the records of updates arriving together share
one fsync of SQLite's write-ahead log (``sync_records``, a group commit), which every later
fsynced commit would flush as well. A file without a record (a crash in between) is never read and is swept at
the next start; the files of a round are deleted once the version it made is recorded. A new
version is written as a file first (temporary name, fsync, rename) and then recorded, together
with the round's closing and the next round's opening, in one transaction: a crash between the
two leaves an unrecorded file that the restarted server overwrites when it closes the same round
again, from the same stored updates.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.numpy import load_file

from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats
from fedrl.core.rows import stored_record, to_arrays
from fedrl.core.update import Update, UpdateMetrics
from fedrl.policy.card import PolicyCard
from fedrl.server.auth import MIN_TOKEN_CHARS, hash_token, new_token
from fedrl.wire import disk
from fedrl.wire.records import ClientStatus, Model, RoundStatus, Submission

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients(
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL, token_hash TEXT UNIQUE NOT NULL,
    added_at REAL NOT NULL, registered_at REAL, last_seen REAL, acting_version INTEGER);
CREATE TABLE IF NOT EXISTS versions(
    version INTEGER PRIMARY KEY, round INTEGER NOT NULL, created_at REAL NOT NULL, eval_return REAL);
CREATE TABLE IF NOT EXISTS rounds(
    round INTEGER PRIMARY KEY, base_version INTEGER NOT NULL, opened_at REAL NOT NULL, closed_at REAL,
    selected TEXT NOT NULL DEFAULT '[]', n_updates INTEGER NOT NULL DEFAULT 0, candidate_return REAL,
    promoted INTEGER, new_version INTEGER);
CREATE TABLE IF NOT EXISTS updates(
    update_id TEXT PRIMARY KEY, client TEXT NOT NULL, round INTEGER NOT NULL, base_version INTEGER NOT NULL,
    env_steps INTEGER NOT NULL, metrics TEXT NOT NULL, digest TEXT NOT NULL, has_control INTEGER NOT NULL,
    accepted_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS updates_by_round ON updates(round);
"""
# Columns added after the first release, with their declarations: a state directory made before
# them gets them when it is opened (ALTER TABLE), with the default for the rows it holds.
_ADDED_COLUMNS = (
    ("rounds", "uplink_bytes", "INTEGER NOT NULL DEFAULT 0"),  # bytes of the round's updates as sent
    ("rounds", "epsilon", "REAL"),  # DP epsilon spent once the round closed; NULL without DP
    ("updates", "uplink_bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("clients", "revoked_at", "REAL"),  # when its token was revoked; NULL while it is valid
    ("updates", "norm", "TEXT"),  # the normalisation statistics sent beside the update (JSON); NULL without
    ("clients", "devices", "INTEGER"),  # a regional aggregator: the most devices it stands for; NULL for a device
    ("updates", "clients", "INTEGER NOT NULL DEFAULT 1"),  # the devices' updates it reduces (a region's: more)
)
NORM = "normalize."  # a version file's normalisation statistics, beside its params and strategy state
REVOKED = "revoked:"  # a revoked client's token_hash is this prefix and its old hash: still unique, never matched


class Seen(NamedTuple):
    """When a client was last heard from, and the version it said it acts with (None: not said)."""

    last_seen: float
    acting_version: int | None


class KnownUpdate(NamedTuple):
    """What the store remembers of an accepted update id, to answer a resubmission."""

    client: str
    round: int
    digest: str
    accepted_at: float


@dataclass(frozen=True)
class StoredUpdate:
    """An accepted update as read back for aggregation."""

    update_id: str
    client: str
    client_id: int
    round: int
    base_version: int
    env_steps: int
    metrics: dict[str, float]
    digest: str
    delta: np.ndarray
    control_delta: np.ndarray | None
    accepted_at: float
    norm: NormStats | None = None  # the statistics of what the client observed; None when nothing is normalised
    clients: int = 1  # the devices' updates it reduces: 1, or a regional aggregator's count

    def as_update(self) -> Update:
        """The update as aggregation takes it."""
        metrics = UpdateMetrics.from_mapping(self.metrics)
        return Update(
            self.client_id, self.base_version, self.delta, self.env_steps, metrics, self.control_delta, self.clients
        )


def _round_status(row: dict) -> RoundStatus:
    """A ``rounds`` row as a record (``promoted`` is stored as an integer, NULL while open)."""
    promoted = row.pop("promoted")
    return RoundStatus(**row, promoted=None if promoted is None else bool(promoted))


def _stored_update(row: dict, delta: np.ndarray, control_delta: np.ndarray | None) -> StoredUpdate:
    """An ``updates`` row (joined with its client's id) and its vectors as a record."""
    row.pop("has_control")
    metrics = json.loads(row.pop("metrics"))
    norm = _norm_from_json(row.pop("norm"))
    return StoredUpdate(**row, metrics=metrics, delta=delta, control_delta=control_delta, norm=norm)


def _norm_json(norm: NormStats | None) -> str | None:
    """Statistics as a JSON text (Python's float repr round-trips every float64 exactly); None stays None."""
    if norm is None:
        return None
    moments = {"obs": norm.obs, "returns": norm.returns}
    return json.dumps(
        {k: [float(m.count), m.mean.tolist(), m.m2.tolist()] for k, m in moments.items() if m is not None}
    )


def _norm_from_json(text: str | None) -> NormStats | None:
    """The statistics ``_norm_json`` wrote."""
    if text is None:
        return None
    found = {k: Moments(np.array(c), np.array(mean), np.array(m2)) for k, (c, mean, m2) in json.loads(text).items()}
    return NormStats(found.get("obs"), found.get("returns"))


def update_file_name(update_id: str) -> str:
    """The file of an update: named by a hash, since the id is the client's choice."""
    return hashlib.sha256(update_id.encode()).hexdigest() + ".f32"


class Store:
    """One server's state directory. Not thread-safe: the coordinator serialises access."""

    def __init__(self, path: Path, durability: str = "fsync") -> None:
        self.path = Path(path)
        self.fsync = durability == "fsync"
        for sub in ("models", "rejected", "updates"):
            disk.private_dir(self.path / sub)
        disk.private_dir(self.path)
        for name in ("server.db", "server.db-wal", "server.db-shm"):  # SQLite gives its journals the db's mode
            if name == "server.db" or (self.path / name).exists():
                disk.private_file(self.path / name)
        self.db = sqlite3.connect(self.path / "server.db", check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row  # rows are read by column name
        self.db.execute("PRAGMA page_size=4096")  # before WAL: it fixes the page size of a new database
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":  # the group commit fsyncs the write-ahead log: without one, nothing would be
            raise OSError(f"{self.path / 'server.db'}: SQLite cannot keep a write-ahead log here (journal mode {mode})")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durability == 'fsync' else 'NORMAL'}")
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.executescript(_SCHEMA)
        self._add_missing_columns()
        self._data_version = self.db.execute("PRAGMA data_version").fetchone()[0]
        self._records = GroupSync(self.path / "server.db-wal")

    def _add_missing_columns(self) -> None:
        """Give a database made by an earlier release the columns added since (``_ADDED_COLUMNS``)."""
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    # --- meta ---------------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        """Store a setting (replacing an earlier value)."""
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        """A stored setting, or None."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # --- clients ------------------------------------------------------------------------
    def add_client(self, name: str, now: float, token: str | None = None, devices: int | None = None) -> str:
        """Register a new client name and return its token (a new one, or ``token``: one another
        server of the hierarchy issued, so a device's one token works at both); only the token's hash
        is stored. ``devices``: the client is a regional aggregator standing for at most this many
        devices (``fedrl fleet add-region``)."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"client name {name!r}: use letters, digits, '-', '_' and '.' only")
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"a token of {len(token)} characters is too easy to guess: use at least {MIN_TOKEN_CHARS}")
        if devices is not None and devices < 1:
            raise ValueError(f"a region stands for at least 1 device, not {devices}")
        token = new_token() if token is None else token
        try:
            self.db.execute(
                "INSERT INTO clients(name, token_hash, added_at, devices) VALUES (?, ?, ?, ?)",
                (name, hash_token(token), now, devices),
            )
        except sqlite3.IntegrityError:
            taken = self.db.execute("SELECT 1 FROM clients WHERE name = ?", (name,)).fetchone()
            raise ValueError(f"client {name!r} already exists" if taken else "that token is another client's") from None
        return token

    def regions(self) -> dict[str, int]:
        """Every regional aggregator among the clients, and the most devices it stands for."""
        rows = self.db.execute("SELECT name, devices FROM clients WHERE devices IS NOT NULL")
        return {row["name"]: row["devices"] for row in rows}

    def revoke(self, name: str, now: float) -> None:
        """Make ``name``'s token worthless (a running server drops it from its cache at its next
        tick); ``ValueError`` for an unknown or already revoked client."""
        row = self.db.execute("SELECT token_hash, revoked_at FROM clients WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ValueError(f"no client {name!r} in this state directory")
        if row["revoked_at"] is not None:
            raise ValueError(
                f"client {name!r} was revoked already; `fedrl fleet rotate-token {name}` issues a new token"
            )
        self.db.execute(
            "UPDATE clients SET token_hash = ?, revoked_at = ? WHERE name = ?", (REVOKED + row["token_hash"], now, name)
        )

    def rotate_token(self, name: str) -> str:
        """A new token for ``name`` (the old one stops working; a revoked client is active again);
        ``ValueError`` for an unknown client."""
        token = new_token()
        changed = self.db.execute(
            "UPDATE clients SET token_hash = ?, revoked_at = NULL WHERE name = ?", (hash_token(token), name)
        ).rowcount
        if not changed:
            raise ValueError(f"no client {name!r} in this state directory")
        return token

    def revoked_at(self, token: str) -> tuple[str, float] | None:
        """The client whose revoked token this is and when it was revoked, or None."""
        row = self.db.execute(
            "SELECT name, revoked_at FROM clients WHERE token_hash = ?", (REVOKED + hash_token(token),)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def changed_elsewhere(self) -> bool:
        """Whether another connection (another process: ``fedrl fleet ...``) committed a change
        since the last call (SQLite's ``data_version``)."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        changed, self._data_version = version != self._data_version, version
        return changed

    def client_for_token(self, token: str) -> tuple[str, int] | None:
        """The (name, id) whose token this is, or None."""
        row = self.db.execute("SELECT name, id FROM clients WHERE token_hash = ?", (hash_token(token),)).fetchone()
        return (row[0], row[1]) if row else None

    def token_names(self) -> dict[str, str]:
        """Every client's token hash and name."""
        rows = self.db.execute("SELECT token_hash, name FROM clients WHERE revoked_at IS NULL")
        return {row["token_hash"]: row["name"] for row in rows}

    def token_hash(self, name: str) -> str | None:
        """A client's token hash (hex), or None when it does not exist or its token was revoked."""
        query = "SELECT token_hash FROM clients WHERE name = ? AND revoked_at IS NULL"
        row = self.db.execute(query, (name,)).fetchone()
        return row[0] if row else None

    def client_id(self, name: str) -> int | None:
        """A client's numeric id, or None when it does not exist."""
        row = self.db.execute("SELECT id FROM clients WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def mark_registered(self, name: str, now: float) -> None:
        """Record a client's first registration."""
        self.db.execute("UPDATE clients SET registered_at = COALESCE(registered_at, ?) WHERE name = ?", (now, name))

    def save_liveness(self, seen: dict[str, Seen]) -> None:
        """Store when each client was last heard from and the version it acts with (one commit)."""
        with self._transaction():
            self.db.executemany(
                "UPDATE clients SET last_seen = ?, acting_version = ? WHERE name = ?",
                [(s.last_seen, s.acting_version, name) for name, s in seen.items()],
            )

    def liveness(self) -> dict[str, Seen]:
        """Last-seen time and acting version of every client that has been seen."""
        rows = self.db.execute("SELECT name, last_seen, acting_version FROM clients WHERE last_seen IS NOT NULL")
        return {row["name"]: Seen(row["last_seen"], row["acting_version"]) for row in rows}

    def clients(self) -> list[ClientStatus]:
        """Every client, with its number of accepted updates."""
        rows = self.db.execute(
            "SELECT c.name AS client, c.registered_at, c.last_seen, c.acting_version, "
            "(SELECT COUNT(*) FROM updates u WHERE u.client = c.name) AS updates_accepted, c.revoked_at, c.devices "
            "FROM clients c ORDER BY c.name"
        )
        return [ClientStatus(**dict(row)) for row in rows]

    # --- versions -----------------------------------------------------------------------
    def _model_path(self, version: int) -> Path:
        return self.path / "models" / f"v{version:06d}.safetensors"

    def latest_version(self) -> int | None:
        """The newest recorded version, or None before the first."""
        return self.db.execute("SELECT MAX(version) FROM versions").fetchone()[0]

    def has_version(self, version: int) -> bool:
        """Whether ``version`` was recorded."""
        return self.db.execute("SELECT 1 FROM versions WHERE version = ?", (version,)).fetchone() is not None

    def load_version(self, version: int) -> tuple[Model, dict[str, np.ndarray]]:
        """A recorded version and the strategy state stored with it."""
        row = self.db.execute("SELECT round, eval_return FROM versions WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise KeyError(version)
        arrays = load_file(str(self._model_path(version)))
        state = {k.removeprefix("strategy."): v for k, v in arrays.items() if k.startswith("strategy.")}
        norm = stored_record(NormStats, arrays, NORM)
        return Model(version, arrays["params"], row["round"], row["eval_return"], norm), state

    def write_version_file(
        self,
        version: int,
        params: np.ndarray,
        state: dict[str, np.ndarray],
        card: PolicyCard | None = None,
        norm: NormStats | None = None,
    ) -> None:
        """Write a version's file (before it is recorded by ``close_round`` or ``record_initial``)
        with the normalisation statistics it acts with, if any; with its ``card``,
        ``fedrl.policy.load_policy`` runs the state directory's deployed version."""
        arrays = {"params": params, **{f"strategy.{k}": v for k, v in state.items()}}
        disk.save_record(self._model_path(version), arrays | ({} if norm is None else to_arrays(norm, NORM)), card=card)

    def prune_versions(self, below: int) -> None:
        """Delete the files of versions older than ``below`` (their records stay)."""
        for path in (self.path / "models").glob("v*.safetensors"):
            if int(path.stem[1:]) < below:
                path.unlink(missing_ok=True)

    def write_rejected(self, round_: int, params: np.ndarray, norm: NormStats | None = None) -> None:
        """Keep a candidate the gate refused, with the normalisation statistics it was judged with."""
        arrays = {"params": params} | ({} if norm is None else to_arrays(norm, NORM))
        disk.save_record(self.path / "rejected" / f"r{round_:06d}.safetensors", arrays)

    def record_initial(
        self,
        params: np.ndarray,
        state: dict[str, np.ndarray],
        eval_return: float | None,
        now: float,
        experiment: str,
        card: PolicyCard | None = None,
        norm: NormStats | None = None,
        version: int = 0,
        round_: int = 0,
    ) -> None:
        """A new run: its experiment, its first version (0, or a regional aggregator's copy of its
        parent's ``version``, made by ``round_``), with the statistics it starts from, and the next
        round open, in one transaction."""
        self.write_version_file(version, params, state, card, norm)
        with self._transaction():
            self.db.execute("INSERT INTO meta(key, value) VALUES ('experiment', ?)", (experiment,))
            self.db.execute("INSERT INTO versions VALUES (?, ?, ?, ?)", (version, round_, now, eval_return))
            self.db.execute(
                "INSERT INTO rounds(round, base_version, opened_at) VALUES (?, ?, ?)", (round_ + 1, version, now)
            )

    def record_copy(self, version: int, round_: int, eval_return: float | None, now: float) -> None:
        """Record a regional aggregator's copy of its parent's ``version`` (made by the parent's
        ``round_``), whose file ``write_version_file`` wrote; a copy recorded already stays as it is."""
        self.db.execute("INSERT OR IGNORE INTO versions VALUES (?, ?, ?, ?)", (version, round_, now, eval_return))

    def renumber_open_round(self, round_: int, base_version: int, now: float) -> None:
        """A regional aggregator opens its parent's ``round_`` from ``base_version``: the open round,
        which holds no update, takes that number, base and opening time."""
        open_round = self.open_round().round
        if self.db.execute("SELECT 1 FROM updates WHERE round = ?", (open_round,)).fetchone() is not None:
            raise ValueError(f"round {open_round} holds updates: forward or close it before opening round {round_}")
        self.db.execute(
            "UPDATE rounds SET round = ?, base_version = ?, opened_at = ?, selected = '[]' WHERE round = ?",
            (round_, base_version, now, open_round),
        )

    # --- rounds -------------------------------------------------------------------------
    def open_round(self) -> RoundStatus:
        """The round that is open now."""
        row = self.db.execute(
            "SELECT round, base_version, opened_at, closed_at, n_updates, candidate_return "
            "FROM rounds WHERE closed_at IS NULL ORDER BY round DESC LIMIT 1"
        ).fetchone()
        return RoundStatus(**dict(row), promoted=None, new_version=None)

    def selected(self, round_: int) -> list[str]:
        """The clients given a task in ``round_``."""
        return json.loads(self.db.execute("SELECT selected FROM rounds WHERE round = ?", (round_,)).fetchone()[0])

    def set_selected(self, round_: int, names: list[str]) -> None:
        """Record the clients given a task in ``round_``."""
        self.db.execute("UPDATE rounds SET selected = ? WHERE round = ?", (json.dumps(sorted(names)), round_))

    def close_round(
        self,
        round_: int,
        now: float,
        candidate_return: float | None,
        new_version: int | None,
        next_base: int,
        epsilon: float | None = None,
    ) -> None:
        """Close ``round_`` (recording its new version if the candidate was promoted, and the DP
        ``epsilon`` spent, None without DP) and open the next."""
        with self._transaction():
            if new_version is not None:
                self.db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?)", (new_version, round_, now, candidate_return)
                )
            self.db.execute(
                "UPDATE rounds SET closed_at = ?, candidate_return = ?, promoted = ?, new_version = ?, epsilon = ?, "
                "n_updates = (SELECT COUNT(*) FROM updates WHERE round = ?), "
                "uplink_bytes = (SELECT COALESCE(SUM(uplink_bytes), 0) FROM updates WHERE round = ?) WHERE round = ?",
                (now, candidate_return, new_version is not None, new_version, epsilon, round_, round_, round_),
            )
            self.db.execute(
                "INSERT INTO rounds(round, base_version, opened_at) VALUES (?, ?, ?)", (round_ + 1, next_base, now)
            )

    def rounds(self, limit: int = 20) -> list[RoundStatus]:
        """The newest ``limit`` rounds, oldest first."""
        open_count = "(SELECT COUNT(*) FROM updates u WHERE u.round = r.round)"
        open_bytes = "(SELECT COALESCE(SUM(uplink_bytes), 0) FROM updates u WHERE u.round = r.round)"
        rows = self.db.execute(
            "SELECT round, base_version, opened_at, closed_at, "
            f"CASE WHEN closed_at IS NULL THEN {open_count} ELSE n_updates END AS n_updates, "
            "candidate_return, promoted, new_version, "
            f"CASE WHEN closed_at IS NULL THEN {open_bytes} ELSE uplink_bytes END AS uplink_bytes, epsilon "
            "FROM rounds r ORDER BY round DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [_round_status(dict(row)) for row in reversed(rows)]

    def most_updates_per_client(self, last_round: int) -> int:
        """The most updates any one client has had accepted in rounds up to ``last_round`` (0 if none)."""
        return self.db.execute(
            "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM updates WHERE round <= ? GROUP BY client)",
            (last_round,),
        ).fetchone()[0]

    # --- updates ---------------------------------------------------------------------------
    def write_update_file(self, submission: Submission) -> None:
        """Write an update's vectors to its file (safe to call without the coordinator's lock); an
        encoded update is written as the float32 delta it decodes to."""
        vectors = [submission.delta] + ([] if submission.control_delta is None else [submission.control_delta])
        path = self.path / "updates" / update_file_name(submission.update_id)
        disk.write_atomic(path, [_raw(v) for v in vectors], fsync=self.fsync)

    def remove_update_file(self, update_id: str) -> None:
        """Delete an update's file (one that was written but will not be recorded)."""
        (self.path / "updates" / update_file_name(update_id)).unlink(missing_ok=True)

    def record_update(self, submission: Submission, round_: int, digest: str, now: float) -> int:
        """Commit an update's record (its file is already written). It survives a crash of the
        process when this returns, and a power cut once ``sync_records`` returns for the ticket
        returned (under ``durability: process``, at once)."""
        if self.fsync:
            self.db.execute("PRAGMA synchronous=NORMAL")  # the log is fsynced by sync_records, for many records
        try:
            self._insert_update(submission, round_, digest, now)
        finally:
            if self.fsync:
                self.db.execute("PRAGMA synchronous=FULL")
        return self._records.wrote()

    @property
    def newest_record(self) -> int:
        """The ticket of the newest update record committed."""
        return self._records.newest

    def sync_records(self, ticket: int) -> None:
        """Return once the update records up to ``ticket`` are on disk; safe to call without the
        coordinator's lock, so that records committed meanwhile share one fsync."""
        if self.fsync:
            self._records.wait(ticket)

    def _insert_update(self, submission: Submission, round_: int, digest: str, now: float) -> None:
        s = submission
        self.db.execute(
            "INSERT INTO updates(update_id, client, round, base_version, env_steps, metrics, digest, has_control, "
            "accepted_at, uplink_bytes, norm, clients) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.update_id,
                s.client,
                round_,
                s.base_version,
                s.env_steps,
                json.dumps(s.metrics),
                digest,
                s.control_delta is not None,
                now,
                s.sent_bytes,
                _norm_json(s.norm),
                s.clients,
            ),
        )

    def find_update(self, update_id: str) -> KnownUpdate | None:
        """What is stored of an accepted update id, or None."""
        row = self.db.execute(
            "SELECT client, round, digest, accepted_at FROM updates WHERE update_id = ?", (update_id,)
        ).fetchone()
        return None if row is None else KnownUpdate(**dict(row))

    def round_clients(self, round_: int) -> list[str]:
        """Clients with an accepted update in ``round_``, in arrival order."""
        rows = self.db.execute("SELECT client FROM updates WHERE round = ? ORDER BY rowid", (round_,))
        return [r[0] for r in rows]

    def spread_updates(self, round_: int, size: int, last: int | None) -> int:
        """Where a round from ``round_`` on holds more than ``size`` updates (asynchronous arrivals
        queued by a server from before buffers were capped), refill the rounds from ``round_`` on
        in arrival order, ``size`` each; with ``last`` (the run's last round) the overflow stays
        there, as it was before; returns the updates moved."""
        if last is not None and round_ > last:
            return 0
        rows = self.db.execute(
            "SELECT rowid, round FROM updates WHERE round >= ? ORDER BY round, rowid", (round_,)
        ).fetchall()
        counts = collections.Counter(r for _, r in rows)
        if not counts or max(counts.values()) <= size:
            return 0
        target = [round_ + i // size if last is None else min(round_ + i // size, last) for i in range(len(rows))]
        moved = [(new, rowid) for new, (rowid, old) in zip(target, rows) if new != old]
        with self._transaction():
            self.db.executemany("UPDATE updates SET round = ? WHERE rowid = ?", moved)
        return len(moved)

    def updates_after(self, round_: int) -> dict[int, int]:
        """Accepted updates per round after ``round_``: asynchronous arrivals queued behind full buffers."""
        rows = self.db.execute("SELECT round, COUNT(*) FROM updates WHERE round > ? GROUP BY round", (round_,))
        return dict(rows.fetchall())

    def round_records(self, round_: int) -> list[sqlite3.Row]:
        """The records of ``round_``'s accepted updates, in arrival order (``read_updates`` adds
        their vectors; it needs no database, so callers can run it outside their lock)."""
        return self.db.execute(
            "SELECT u.update_id, u.client, c.id AS client_id, u.round, u.base_version, u.env_steps, u.metrics, "
            "u.digest, u.has_control, u.accepted_at, u.norm, u.clients "
            "FROM updates u JOIN clients c ON c.name = u.client WHERE u.round = ? ORDER BY u.rowid",
            (round_,),
        ).fetchall()

    def read_updates(self, records: list[sqlite3.Row], dim: int) -> list[StoredUpdate]:
        """The updates of ``round_records``, their ``(dim,)`` vectors read from their files straight
        into one round buffer (deltas, and control deltas: rows of one array each, which aggregation
        reads as they are, so a round's updates are in memory once). A file of another size than its
        record declares is read as it is, for the screen to refuse."""
        controls = [bool(r["has_control"]) for r in records]
        deltas = np.empty((len(records), dim), dtype=np.float32)
        control = np.empty((sum(controls), dim), dtype=np.float32)
        out, k = [], 0
        for i, r in enumerate(records):
            rows = [deltas[i]] + ([control[k]] if controls[i] else [])
            delta, control_delta = [*self._read_into(r["update_id"], rows), None][:2]
            out.append(_stored_update(dict(r), delta, control_delta))
            k += controls[i]
        return out

    def _read_into(self, update_id: str, rows: list[np.ndarray]) -> list[np.ndarray]:
        """An update's vectors: read into ``rows`` when its file holds exactly as many floats, else
        as the file holds them (split in two halves when it has a control delta)."""
        path = self.path / "updates" / update_file_name(update_id)
        if path.stat().st_size == sum(v.nbytes for v in rows):
            with open(path, "rb") as file:
                if all(file.readinto(memoryview(v).cast("B")) == v.nbytes for v in rows):
                    return rows
        data = np.fromfile(path, dtype=np.float32)
        return [data] if len(rows) == 1 else [data[: data.size // 2], data[data.size // 2 :]]

    def sweep_update_files(self) -> int:
        """Delete update files that belong to no open round (applied, or never recorded); returns how many."""
        keep = {
            update_file_name(uid)
            for (uid,) in self.db.execute(
                "SELECT update_id FROM updates WHERE round >= (SELECT MIN(round) FROM rounds WHERE closed_at IS NULL)"
            )
        }
        removed = 0
        for path in (self.path / "updates").iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _transaction(self):
        return _Transaction(self.db)


def _raw(vector: np.ndarray) -> memoryview:
    """The bytes of a float32 vector as stored (little-endian), without a copy where they already are."""
    return memoryview(np.ascontiguousarray(vector, dtype="<f4")).cast("B")


class GroupSync:
    """A group commit: records committed to SQLite's write-ahead log without an fsync are made
    durable by one fsync of the log for all those committed before it started. Each caller
    waits for its ticket; one of them syncs while the others wait (``fsync`` flushes the file's
    every page, whoever wrote it)."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self._changed = threading.Condition()
        self._written = self._synced = 0
        self._syncing = False

    @property
    def newest(self) -> int:
        """The ticket of the newest record noted."""
        with self._changed:
            return self._written

    def wrote(self) -> int:
        """Note one more record committed (called right after its commit); returns its ticket."""
        with self._changed:
            self._written += 1
            return self._written

    def wait(self, ticket: int) -> None:
        """Return once every record up to ``ticket`` is on disk."""
        with self._changed:
            while self._synced < ticket:
                if self._syncing:
                    self._changed.wait()
                    continue
                self._syncing, target = True, self._written
                self._changed.release()
                try:
                    self._sync()
                finally:
                    self._changed.acquire()
                    self._syncing = False
                    self._changed.notify_all()
                self._synced = max(self._synced, target)

    def _sync(self) -> None:
        try:
            fd = os.open(self._log, os.O_RDONLY)
        except FileNotFoundError:  # the last connection closed, which checkpointed and synced the log
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
