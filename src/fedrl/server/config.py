"""The server's config: the experiment every client trains, plus how the deployed server runs.

A server YAML file has an ``experiment`` section -- the same experiment config ``fedrl run``
takes, inline or as a path relative to the server file -- and the deployment sections below.
``federation.n_clients`` is the fleet size (client indices run from 0 to n_clients - 1),
``federation.fraction * n_clients`` the updates a synchronous round waits for,
``federation.rounds`` and ``target_return`` when the run ends, and ``strategy`` is aggregated as
every runtime aggregates (``fedrl.experiment.aggregation``). Problems are one-line
``ConfigError`` messages naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from fedrl.core.frozen import FrozenConfig
from fedrl.core.securestats import MAX_CLIENTS
from fedrl.experiment.config import ConfigError, ExperimentConfig, KeyProblem
from fedrl.experiment.loading import (
    anchor_user_dirs,
    apply_override,
    describe_error,
    load_config,
    parse_config,
    read_yaml,
)


class RoundConfig(FrozenConfig):
    """When a round closes and who counts as online."""

    updates_per_round: int | None = Field(
        None,
        ge=1,
        description="updates a synchronous round waits for (default: fraction x n_clients; in a hierarchy, "
        "federation.regions at the root and a region's share of fraction x n_clients at a regional aggregator)",
    )
    min_updates: int | None = Field(
        None,
        ge=1,
        description="updates a round needs once its deadline has passed (default: all it waits for; in a "
        "hierarchy 1, at the root and at a regional aggregator: a region that is gone holds up no one)",
    )
    deadline_s: float = Field(60.0, gt=0, description="seconds after opening when a round may close with min_updates")
    liveness_s: float = Field(30.0, gt=0, description="a client not heard from for this long is offline")
    heartbeat_s: float = Field(5.0, gt=0, description="how often clients are asked to send a heartbeat")
    retry_s: float = Field(1.0, gt=0, description="how long a client told to wait should wait before asking again")
    long_poll_s: float = Field(
        5.0,
        ge=0,
        description="gRPC: a client told to wait for the next round is held this long, and answered as soon as a "
        "round opens (0: answered at once, to ask again after retry_s); limits.long_polls are held at a time",
    )
    max_staleness: int = Field(8, ge=0, description="asynchronous mode: oldest base version accepted, in versions")
    secure_step_s: float = Field(
        30.0, gt=0, description="secure aggregation: how long a step after the first waits for clients that are late"
    )


class GateConfig(FrozenConfig):
    """The evaluation gate: a candidate is deployed only if it is not worse than the deployed model.

    The server evaluates each candidate on held-out clients of the experiment's environment
    family (their own physics, never trained on), ``episodes`` each, with fixed seeds so that
    every candidate meets the same episodes. It is promoted when its mean return is at least
    ``deployed - max(tolerance, relative_tolerance * |deployed|)``.
    """

    enabled: bool = Field(True, description="evaluate candidates before deploying them")
    heldout_clients: int = Field(10, ge=1, description="held-out environments the server evaluates on")
    episodes: int = Field(4, ge=1, description="episodes per held-out environment")
    tolerance: float = Field(0.0, ge=0, description="absolute return a candidate may lose and still be deployed")
    relative_tolerance: float = Field(0.1, ge=0, description="fraction of |deployed return| a candidate may lose")


class LimitsConfig(FrozenConfig):
    """What one client may send, and how often."""

    max_message_bytes: int = Field(
        64 * 2**20,
        ge=2 * 2**20,
        description="largest message, and largest reassembled update (delta plus control delta); at least 2 MiB, "
        "since models and updates travel in 1 MiB chunks",
    )
    max_concurrent_streams: int = Field(
        256, ge=1, description="calls served at once (server-wide, and per HTTP/2 connection); more are refused"
    )
    worker_threads: int = Field(
        32,
        ge=1,
        description="threads for the gRPC service's waits (an update's fsyncs, registering, pulling a stored version, "
        "a long poll); also the uploads read at once, the others waiting unread in their HTTP/2 windows",
    )
    grow_windows: bool = Field(
        False,
        description="let gRPC grow each call's HTTP/2 receive window to the link's bandwidth-delay product (BDP "
        "probing): faster single uploads over long, fast links, but a burst of uploads is buffered at that size (1,000 "
        "clients sending 1M-parameter updates at once: 5.9 GB peak, against 3.3 GB with the fixed 64 KiB window)",
    )
    long_polls: int | None = Field(
        None,
        ge=0,
        description="clients held at once waiting for the next round (rounds.long_poll_s), each holding a worker "
        "thread, so fewer than worker_threads; the others are told to ask again after retry_s. null: half of "
        "worker_threads, at most 16",
    )

    @model_validator(mode="after")
    def _threads_left_for_uploads(self) -> LimitsConfig:
        if self.long_polls is not None and self.long_polls >= self.worker_threads:
            raise KeyProblem(
                "long_polls",
                f"must be below worker_threads ({self.worker_threads}): held clients must leave threads for uploads",
                self.long_polls,
            )
        return self

    @property
    def held_at_most(self) -> int:
        """Clients ``task`` may hold at once: ``long_polls``, or half the worker threads (at most 16)."""
        return self.long_polls if self.long_polls is not None else min(16, self.worker_threads // 2)

    uploads_per_client: int = Field(
        2, ge=1, description="updates one client may be uploading at once; more are refused (RESOURCE_EXHAUSTED)"
    )
    upload_idle_s: float = Field(
        15.0, gt=0, description="an upload that sends nothing for this long is cancelled, freeing its place"
    )
    upload_timeout_s: float = Field(
        120.0, gt=0, description="the longest an upload may take, however slowly it trickles; then it is cancelled"
    )
    rate_per_s: float = Field(50.0, gt=0, description="calls per second a client may make, on average")
    burst: int = Field(100, ge=1, description="calls a client may make at once")
    unknown_token_rate_per_s: float = Field(
        1.0, gt=0, description="calls per second with an unknown token one source (a peer address) may make"
    )
    unknown_token_burst: int = Field(
        10, ge=1, description="calls with an unknown token one source may make at once; then refused unread"
    )
    max_update_norm: float | None = Field(None, gt=0, description="refuse updates whose L2 norm exceeds this")
    max_update_norm_ratio: float | None = Field(
        2.0,
        gt=0,
        description="refuse updates whose L2 norm exceeds this many times the deployed model's (honest updates "
        "measured 0.1-0.5 of it); not under local DP, whose noise alone may be larger; null: no such bound",
    )
    max_env_steps: int | None = Field(
        None, ge=1, description="refuse updates claiming more env steps (default: 4x the local budget, or 10^7)"
    )


class StoreConfig(FrozenConfig):
    """How durable an acknowledgement is, and how many old versions to keep."""

    durability: Literal["fsync", "process"] = Field(
        "fsync",
        description="fsync: an acknowledged update survives power loss (SQLite synchronous=FULL); "
        "process: it survives a crash or kill -9 of the server, not of the machine (synchronous=NORMAL)",
    )
    keep_versions: int | None = Field(
        None,
        ge=1,
        description="keep the files of only this many newest versions (at least max_staleness + 1 of them in "
        "asynchronous mode, which accepts updates from older ones); null keeps every version",
    )


class ServerConfig(FrozenConfig):
    """Everything ``fedrl server`` needs besides addresses and certificates (given on the command line)."""

    experiment: ExperimentConfig = ExperimentConfig()
    rounds: RoundConfig = RoundConfig()
    gate: GateConfig = GateConfig()
    limits: LimitsConfig = LimitsConfig()
    store: StoreConfig = StoreConfig()

    @model_validator(mode="after")
    def _simulator_only(self) -> ServerConfig:
        """A server deploys one model, not a clustered run's several; it stores every round."""
        if self.experiment.federation.clusters > 1:
            raise KeyProblem(
                "experiment.federation.clusters", "the simulator's only, for now: a server serves one model", True
            )
        if self.experiment.federation.checkpoint_every != 1:
            raise KeyProblem(
                "experiment.federation.checkpoint_every",
                "the simulator's only: a server stores every round and update durably",
                self.experiment.federation.checkpoint_every,
            )
        if self.experiment.stats_in_secure_sum and self.updates_per_round > MAX_CLIENTS:
            raise KeyProblem(
                "rounds.updates_per_round",
                f"inside the secure sum at most {MAX_CLIENTS} clients' statistics add up without wrapping",
                self.updates_per_round,
            )
        return self

    @property
    def asynchronous(self) -> bool:
        """FedAsync / FedBuff: rounds close after every ``buffer_size`` arrivals, with no barrier."""
        return self.experiment.asynchronous

    @property
    def updates_per_round(self) -> int:
        """Updates a round waits for: the buffer in asynchronous mode, else ``rounds.updates_per_round``,
        else ``fraction * n_clients`` (at the root of a hierarchy: one update per region)."""
        if self.asynchronous:
            return self.experiment.strategy.buffer_size if self.experiment.strategy.name == "fedbuff" else 1
        if self.rounds.updates_per_round is not None:
            return self.rounds.updates_per_round
        fed = self.experiment.federation
        return fed.regions if self.hierarchical else fed.clients_per_round

    @property
    def hierarchical(self) -> bool:
        """Whether the experiment runs as a hierarchy (``federation.regions``): a root whose senders are
        regional aggregators (and devices that failed over to it), or one of those aggregators."""
        return self.experiment.federation.regions > 1

    @property
    def min_updates(self) -> int:
        """Updates a round needs after its deadline: ``rounds.min_updates``, else all it waits for,
        except at the root of a hierarchy, which closes with what its regions forwarded (1): a region
        that dropped the round, or is gone, cannot give back its place."""
        wanted = self.updates_per_round
        if self.rounds.min_updates is None:
            return 1 if self.hierarchical else wanted
        return min(self.rounds.min_updates, wanted)

    @property
    def versions_kept(self) -> int | None:
        """Newest version files kept: ``store.keep_versions``, raised to what asynchronous mode
        still accepts updates from; None keeps them all."""
        keep = self.store.keep_versions
        if keep is None or not self.asynchronous:
            return keep
        return max(keep, self.rounds.max_staleness + 1)

    @property
    def max_env_steps(self) -> int:
        """The most env steps one update may claim."""
        if self.limits.max_env_steps is not None:
            return self.limits.max_env_steps
        steps = self.experiment.federation.local_steps
        return 4 * steps if steps is not None else 10**7


SIMULATOR_ONLY = ("fleet", "attack", "personalization", "backend")  # experiment sections a deployment never reads


def simulator_only_keys(experiment: ExperimentConfig) -> list[str]:
    """The keys the experiment sets that only the simulator uses (``fleet.*``, ``attack.*``,
    ``personalization.*``, ``backend.*``): a deployed server accepts and ignores them, and should say so."""
    return [
        f"{section}.{key}"
        for section in SIMULATOR_ONLY
        if section in experiment.model_fields_set
        for key in sorted(getattr(experiment, section).model_fields_set)
    ]


def _experiment(data: Any, folder: Path, overrides: list[str]) -> ExperimentConfig:
    """The experiment section: a path to an experiment YAML (relative to ``folder``) or a mapping."""
    if isinstance(data, str):
        return load_config(folder / data, overrides)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"bad config: experiment must be a mapping or a file path, got {type(data).__name__}")
    merged = dict(data or {})
    for assignment in overrides:
        merged = apply_override(merged, assignment)
    # after the overrides, as load_config does: the user's code named either way is looked up beside the config
    return parse_config(anchor_user_dirs(merged, folder), within="experiment")


def load_server_config(path: Path | None, overrides: list[str] = ()) -> ServerConfig:
    """Read a server YAML (or start from the defaults), apply ``key.path=value`` overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    folder = Path(path).parent if path is not None else Path(".")
    mine = [o for o in overrides if not o.startswith("experiment.")]
    theirs = [o.removeprefix("experiment.") for o in overrides if o.startswith("experiment.")]
    experiment = _experiment(data.pop("experiment", None), folder, theirs)
    for assignment in mine:
        data = apply_override(data, assignment)
    return _validated(data, experiment)


def load_region_config(path: Path | None, overrides: list[str], experiment: ExperimentConfig) -> ServerConfig:
    """A regional aggregator's config: the deployment sections of a server YAML (``rounds``,
    ``limits``, ``store``; no ``experiment``, since a region trains its parent's) with the parent's
    ``experiment``. A region evaluates nothing (its parent's gate does), and a round waits for the
    region's share of the fleet's updates, ``fraction * n_clients / regions``, unless
    ``rounds.updates_per_round`` says otherwise, and forwards what arrived by its deadline
    (``ServerConfig.min_updates``: 1 in a hierarchy)."""
    data = read_yaml(path) if path is not None else {}
    for assignment in overrides:
        data = apply_override(data, assignment)
    for section in ("rounds", "gate"):  # merged with defaults below: each must be a mapping first
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ConfigError(f"bad config: {section} must be a mapping, got {type(data[section]).__name__}")
    if "experiment" in data:
        raise ConfigError("bad config: experiment: a regional aggregator trains its parent's experiment; remove it")
    gate = data.get("gate") or {}
    if gate.get("enabled"):
        raise ConfigError(
            "bad config: gate.enabled = True: a regional aggregator evaluates nothing; its parent's gate does"
        )
    fed = experiment.federation
    if fed.regions == 1:
        raise ConfigError(
            "the parent's experiment is not a hierarchy (experiment.federation.regions: 1): "
            "set federation.regions on the parent to the number of its regions"
        )
    share = -(-fed.clients_per_round // fed.regions)
    rounds = {"updates_per_round": share, **(data.get("rounds") or {})}
    return _validated({**data, "rounds": rounds, "gate": {**gate, "enabled": False}}, experiment)


def _validated(data: dict, experiment: ExperimentConfig) -> ServerConfig:
    """The deployment sections ``data`` with ``experiment``, validated; a one-line ``ConfigError``."""
    try:
        return ServerConfig.model_validate({**data, "experiment": experiment})
    except ValidationError as exc:
        raise ConfigError(f"bad config: {describe_error(exc.errors()[0], data, ServerConfig)}") from None
