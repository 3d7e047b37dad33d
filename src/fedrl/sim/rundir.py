"""The run directory: resolved config, metrics (CSV and SQLite), checkpoints, final policy.

Layout::

    RUN_DIR/config.yaml                resolved config, every default written out
    RUN_DIR/metrics.csv, metrics.sqlite  one row per round (and client_returns per client)
    RUN_DIR/client_returns.csv
    RUN_DIR/checkpoints/round_NNNNN.safetensors + .json
    RUN_DIR/final_policy.safetensors + .json
    RUN_DIR/summary.json, RUN_DIR/plots/*.png

Metrics of a round are written before its checkpoint; on resume, rows after the last
checkpoint are dropped, so a crash between the two never duplicates a round. Files are
written durably (``fedrl.wire.disk``: a temporary file, fsync, rename), so a checkpoint is either whole or absent.

A checkpoint holds every client's ongoing training episodes and the update pipeline's
per-client state (error-feedback residuals, DP participation counts), and the fleet's normalisation
statistics (``normalize.*``, also in the card of every saved policy), so a resumed run matches an
unbroken one bit for bit -- except with a Gymnasium adapter family (``env.family: gym``),
whose environments are live Python objects that step in place and cannot be written as
arrays. Its checkpoints hold no env state (their JSON says ``"env_state": "fresh"``), and on
resume every client starts fresh episodes, drawn from the run seed and the round: the
resumed run is reproducible, but it differs from an unbroken one from the first resumed
round on, since the episodes the clients were in the middle of are cut short.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.numpy import load_file

from fedrl.agents import ClientState
from fedrl.core.normstats import NormStats
from fedrl.core.pipeline import PipelineState
from fedrl.core.rows import from_arrays, stored_record, to_arrays
from fedrl.core.strategies import state_from_arrays, state_to_arrays
from fedrl.envs.base import EnvState, reset
from fedrl.envs.base import state_from_arrays as env_state_from_arrays
from fedrl.envs.base import state_to_arrays as env_state_to_arrays
from fedrl.experiment.card import policy_card
from fedrl.experiment.setup import Setup
from fedrl.experiment.streams import RESUME_STREAM
from fedrl.sim.state import Clusters, InFlight, RoundResult, SimState, slotted_buffer
from fedrl.wire import disk


class RoundRow(NamedTuple):
    """One round's metrics: a row of ``metrics.csv`` and of the ``rounds`` table (NaN is stored as NULL)."""

    round: int
    env_steps: int
    wall_s: float
    n_updates: int
    train_loss: float
    global_mean_return: float
    worst_client_return: float
    p10_client_return: float
    personalized_mean_return: float
    personalized_worst_client_return: float
    sim_time_s: float
    n_sampled: int
    n_dropped: int
    n_rejected: int
    mean_staleness: float
    train_episodes: int
    uplink_bytes: float
    downlink_bytes: float
    uplink_bytes_per_client: float
    downlink_bytes_per_client: float
    compression_ratio: float
    epsilon: float
    secagg_threshold: float
    secagg_recovered: float
    confirmed_return: float
    eval_clients: float  # clients evaluated (a sample's size); NaN in rounds without evaluation
    mean_return_low: float  # a sampled evaluation's 95 % interval for the fleet's mean; NaN otherwise
    mean_return_high: float


class ClientRow(NamedTuple):
    """One client's returns in one evaluated round: a row of ``client_returns.csv``."""

    round: int
    client: int
    global_return: float
    personalized_return: float


ROUND_COLUMNS = RoundRow._fields
CLIENT_COLUMNS = ClientRow._fields


def column(rows: list[NamedTuple], name: str) -> np.ndarray:
    """One column of metric rows as float64, NaN where nothing was stored."""
    return np.array([getattr(r, name) for r in rows], dtype=np.float64)


# What a checkpoint's array names start with.
STRATEGY, ENV, CLIENT, INFLIGHT, PIPELINE, NORM = "strategy.", "env.", "client.", "inflight.", "pipeline.", "normalize."
CLUSTERS = "clusters."


def _prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {prefix + name: value for name, value in arrays.items()}


def _under(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays whose names start with ``prefix``, by the rest of their names."""
    return {name.removeprefix(prefix): value for name, value in arrays.items() if name.startswith(prefix)}


def _clusters_to_arrays(clusters: Clusters) -> dict[str, np.ndarray]:
    """A clustered run's models, each one's strategy state and the clients' choices, by name."""
    arrays = {CLUSTERS + "params": clusters.params, CLUSTERS + "assignment": clusters.assignment}
    for k, state in enumerate(clusters.strategy_states):
        arrays.update(_prefixed(f"{CLUSTERS}{k}.{STRATEGY}", state_to_arrays(state)))
    return arrays


def _clusters_from_arrays(setup: Setup, arrays: dict[str, np.ndarray]) -> Clusters:
    """What ``_clusters_to_arrays`` wrote."""
    params = arrays[CLUSTERS + "params"]
    states = tuple(
        state_from_arrays(setup.strategy, _under(f"{CLUSTERS}{k}.{STRATEGY}", arrays)) for k in range(len(params))
    )
    return Clusters(params, states, arrays[CLUSTERS + "assignment"])


def _round_row(r: RoundResult) -> RoundRow:
    nan, personal, traffic, secure = float("nan"), r.personalized_returns, r.stats.traffic, r.stats.secure
    return RoundRow(
        round=r.round,
        env_steps=r.env_steps,
        wall_s=round(r.wall_s, 4),
        n_updates=r.stats.n_updates,
        train_loss=r.stats.train_loss,
        global_mean_return=r.global_mean_return,
        worst_client_return=r.worst_client_return,
        p10_client_return=r.p10_client_return,
        personalized_mean_return=float(np.mean(personal)) if personal is not None else nan,
        personalized_worst_client_return=float(np.min(personal)) if personal is not None else nan,
        sim_time_s=r.sim_time_s,
        n_sampled=r.stats.n_sampled,
        n_dropped=r.stats.n_dropped,
        n_rejected=r.stats.n_rejected,
        mean_staleness=r.stats.mean_staleness,
        train_episodes=r.stats.episodes,
        # bytes: NaN where not measured (asynchronous rounds, failed secure sums)
        uplink_bytes=nan if traffic is None else traffic.uplink,
        downlink_bytes=nan if traffic is None else traffic.downlink,
        uplink_bytes_per_client=nan if traffic is None else traffic.uplink_per_client,
        downlink_bytes_per_client=nan if traffic is None else traffic.downlink_per_client,
        compression_ratio=nan if traffic is None else traffic.compression_ratio,
        epsilon=r.epsilon,
        # secure aggregation's t, and whether the sum was recovered (1) or the round kept the old model (0)
        secagg_threshold=nan if secure is None else secure.threshold,
        secagg_recovered=nan if secure is None else int(secure.recovered),
        # the larger evaluation of a round whose evaluation reached the target (eval.confirm_episodes)
        confirmed_return=r.confirmed_return,
        eval_clients=nan if r.client_returns is None else len(r.client_returns),
        mean_return_low=r.mean_return_interval[0],
        mean_return_high=r.mean_return_interval[1],
    )


def _client_rows(r: RoundResult) -> list[ClientRow]:
    if r.client_returns is None:
        return []
    personal = r.personalized_returns if r.personalized_returns is not None else [float("nan")] * len(r.client_returns)
    return [ClientRow(r.round, int(i), float(g), float(p)) for i, g, p in zip(r.client_ids, r.client_returns, personal)]


def _insert(table: str, columns: tuple[str, ...]) -> str:
    """An insert of one row by column name (an upgraded table may hold its columns in another order)."""
    return f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _fresh_episodes(setup: Setup, round_: int) -> EnvState:
    """New episodes on every client, for a checkpoint without env state; seeded by the round."""
    state, _ = reset(setup.family, setup.env_params, setup.config.learner.n_envs, setup.rng(RESUME_STREAM, round_))
    return state


@dataclass(frozen=True)
class RunDir:
    """Reading and writing one run's directory."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        """Folder of per-round checkpoints."""
        return self.path / "checkpoints"

    def create(self, config_yaml: str) -> None:
        """Make the directory, write the resolved config and empty metric tables."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        disk.write_atomic(self.path / "config.yaml", config_yaml.encode())
        with self._connect() as db:
            cols = ", ".join(f"{c} REAL" for c in ROUND_COLUMNS[1:])
            db.execute(f"CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, {cols})")
            db.execute(
                "CREATE TABLE IF NOT EXISTS client_returns (round INTEGER, client INTEGER, "
                "global_return REAL, personalized_return REAL, PRIMARY KEY (round, client))"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path / "metrics.sqlite")
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def record(self, result: RoundResult) -> RoundRow:
        """Append one round's metrics to SQLite and the CSV files; returns the round's row."""
        row, clients = _round_row(result), _client_rows(result)
        with self._connect() as db:
            db.execute(_insert("rounds", ROUND_COLUMNS), row)
            db.executemany(_insert("client_returns", CLIENT_COLUMNS), clients)
        self._append_csv("metrics.csv", ROUND_COLUMNS, [row])
        self._append_csv("client_returns.csv", CLIENT_COLUMNS, clients)
        return row

    def _append_csv(self, name: str, header: tuple[str, ...], rows: list[tuple]) -> None:
        path = self.path / name
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(header)
            writer.writerows(rows)

    def truncate_after(self, round_: int) -> None:
        """Forget metrics of rounds after ``round_`` (they were not checkpointed); a metrics table
        written by an older fedrl gains the columns added since (empty for its old rounds)."""
        with self._connect() as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(rounds)")}
            for column in ROUND_COLUMNS:
                if column not in have:
                    db.execute(f"ALTER TABLE rounds ADD COLUMN {column} REAL")
            db.execute("DELETE FROM rounds WHERE round > ?", (round_,))
            db.execute("DELETE FROM client_returns WHERE round > ?", (round_,))
        for name, table, header in (
            ("metrics.csv", "rounds", ROUND_COLUMNS),
            ("client_returns.csv", "client_returns", CLIENT_COLUMNS),
        ):
            (self.path / name).unlink(missing_ok=True)
            self._append_csv(name, header, self._select(table, header))

    def _select(self, table: str, columns: tuple[str, ...]) -> list[tuple]:
        """Every row's ``columns``; a column a run written by an older fedrl lacks reads as NULL."""
        order = "round" if table == "rounds" else "round, client"
        with self._connect() as db:
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            chosen = ", ".join(column if column in have else f"NULL AS {column}" for column in columns)
            return db.execute(f"SELECT {chosen} FROM {table} ORDER BY {order}").fetchall()

    def rounds(self) -> list[RoundRow]:
        """Every recorded round's metrics, in round order."""
        return [RoundRow(*row) for row in self._select("rounds", ROUND_COLUMNS)]

    def client_returns(self) -> list[ClientRow]:
        """Every recorded client return, by round and client."""
        return [ClientRow(*row) for row in self._select("client_returns", CLIENT_COLUMNS)]

    def save_checkpoint(self, setup: Setup, state: SimState) -> Path:
        """Write the global policy, strategy state and (where they are arrays) the client env
        states of ``state``."""
        arrays = {"params": state.params, **_prefixed(STRATEGY, state_to_arrays(state.strategy_state))}
        if state.norm is not None:
            arrays.update(to_arrays(state.norm, NORM))
        if state.clusters is not None:
            arrays.update(_clusters_to_arrays(state.clusters))
        if setup.env_state_is_value:
            arrays.update(_prefixed(ENV, env_state_to_arrays(state.env_state)))
        stem = self.checkpoints / f"round_{state.round:05d}"
        card = policy_card(setup, state.params, state.version, norm=state.norm)  # fedrl.load_policy runs it too
        disk.save_record(stem.with_suffix(".safetensors"), arrays, card=card)
        per_client = to_arrays(state.client_state, CLIENT) | to_arrays(state.pipeline_state, PIPELINE)
        if state.inflight is not None:
            per_client |= to_arrays(state.inflight, INFLIGHT)
        if per_client:
            disk.save_record(stem.with_suffix(".clients.safetensors"), per_client)
        meta = {
            "round": state.round,
            "version": state.version,
            "env_steps": state.env_steps,
            "wall_s": state.wall_s,
            "sim_time_s": state.sim_time_s,
            "family": setup.family.name,
            "param_spec": setup.net.spec.to_json(),
            "env_state": "saved" if setup.env_state_is_value else "fresh",
        }
        disk.write_atomic(stem.with_suffix(".json"), json.dumps(meta, indent=2).encode())
        for older in self.checkpoints.glob("round_*.clients.safetensors"):
            if older.name < stem.name:  # replay buffers can be large: keep only the newest learner state
                older.unlink()
        return stem.with_suffix(".safetensors")

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (its JSON is written last), or None."""
        metas = sorted(self.checkpoints.glob("round_*.json"))
        return metas[-1].with_suffix(".safetensors") if metas else None

    def load_checkpoint(self, setup: Setup, path: Path) -> SimState:
        """Rebuild the ``SimState`` a checkpoint holds; clients start fresh episodes where it
        holds no env state (adapter families, see the module docstring)."""
        arrays = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        strategy = state_from_arrays(setup.strategy, _under(STRATEGY, arrays))
        env_arrays = _under(ENV, arrays)
        if env_arrays:
            env = env_state_from_arrays(setup.family, setup.env_params, env_arrays)
        else:
            env = _fresh_episodes(setup, meta["round"])
        clients_file = path.with_suffix(".clients.safetensors")
        per_client = load_file(str(clients_file)) if clients_file.exists() else {}
        client_state = from_arrays(ClientState, per_client, CLIENT)
        if not env_arrays and client_state.returns is not None:  # fresh episodes: their running returns restart
            client_state = replace(client_state, returns=np.zeros_like(client_state.returns))
        return SimState(
            meta["round"],
            arrays["params"],
            strategy,
            env,
            meta["env_steps"],
            meta["wall_s"],
            client_state=client_state,
            sim_time_s=meta.get("sim_time_s", 0.0),
            version=meta.get("version", meta["round"]),
            inflight=stored_record(InFlight, slotted_buffer(per_client, INFLIGHT), INFLIGHT),
            pipeline_state=from_arrays(PipelineState, per_client, PIPELINE),
            norm=stored_record(NormStats, arrays, NORM),
            clusters=_clusters_from_arrays(setup, arrays) if _under(CLUSTERS, arrays) else None,
        )

    def save_policy(
        self, setup: Setup, params: np.ndarray, name: str, meta: dict, norm: NormStats | None = None
    ) -> Path:
        """Write a policy as safetensors (named tensors) with a JSON description beside it; its card
        carries the fleet's observation statistics ``norm`` when the learner normalises."""
        path = self.path / f"{name}.safetensors"
        card = policy_card(setup, params, meta.get("version", meta.get("round")), norm=norm)
        disk.save_record(path, setup.net.spec.unflatten(params), card=card)
        description = {
            "family": setup.family.name,
            "hidden": list(setup.net.shape.hidden),
            "network": setup.config.learner.network,
            "param_spec": setup.net.spec.to_json(),
            **meta,
        }
        disk.write_atomic(path.with_suffix(".json"), json.dumps(description, indent=2).encode())
        return path

    def load_policy(self, setup: Setup, name: str = "final_policy") -> np.ndarray:
        """A policy saved by ``save_policy`` as one flat vector."""
        return setup.net.spec.flatten(load_file(str(self.path / f"{name}.safetensors")))

    def write_summary(self, summary: dict) -> None:
        """The run's headline numbers as JSON."""
        disk.write_atomic(self.path / "summary.json", json.dumps(summary, indent=2).encode())
