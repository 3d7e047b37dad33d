"""What a run is: the experiment config, one frozen record per component combined into one.

Every runtime reads the same record: the simulator (``fedrl run``), the deployed server and the
edge agents. It is validated by pydantic; any problem is reported as one ``ConfigError`` line that
names the key, the value and what is allowed (``fedrl.experiment.loading`` reads YAML and
``--set`` overrides into it).

Whether a run is asynchronous has one answer, ``ExperimentConfig.asynchronous``: the strategy's
(FedAsync and FedBuff are). ``fleet`` and ``attack`` describe the simulated fleet and its
attackers; a deployment ignores them.

``env.family: gym`` with an ``env.gym`` section runs any registered Gymnasium id through the
adapter (``fedrl.envs.gym_adapter``). Its parameter setter, ``"module:function"``, is imported
while the config is validated, from ``env.gym.setter_dir`` first (which ``load_config`` sets to
the config file's folder, or resolves against it), then the working directory, then the usual
``sys.path``; see docs/envs.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from fedrl.agents import LEARNERS, LearnerConfig, PPOConfig, UserLearnerConfig
from fedrl.core.frozen import FrozenConfig
from fedrl.core.pipeline import PipelineConfig, budget_problem
from fedrl.core.robust import RobustConfig
from fedrl.core.secagg import check_headroom
from fedrl.core.securestats import MAX_CLIENTS
from fedrl.core.strategies import STRATEGY_CONFIGS, USER_TAG, FedAvgConfig, StrategyConfig, UserStrategyConfig
from fedrl.envs import FAMILIES
from fedrl.envs.gym_adapter import ACTION_BOUND, ParamSetter
from fedrl.policy.usercode import import_function

GYM_FAMILY = "gym"
DEVICE_FAMILY = "device"
SETTER_FORM = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


VARIANTS: dict[str, dict[str, type[BaseModel]]] = {
    "learner": {**{name: kind.config for name, kind in LEARNERS.items()}, USER_TAG: UserLearnerConfig},
    "strategy": {**STRATEGY_CONFIGS, USER_TAG: UserStrategyConfig},
}
"""The records a ``name`` key chooses between, per section."""
ROBUST_KEYS = tuple(RobustConfig.model_fields)


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the key and value."""


class KeyProblem(ValueError):
    """A check made on a whole section that blames one of its keys, so the message names it
    (``env.gym.setter``) rather than the section (``env.gym``)."""

    def __init__(self, key: str, message: str, value: Any = None):
        super().__init__(message)
        self.key, self.value = key, value


def import_setter(spec: str, setter_dir: str | None) -> ParamSetter:
    """The parameter setter ``"module:function"`` (``import_function``, looked up in ``setter_dir`` first)."""
    return import_function(spec, setter_dir, "setter")


class GymParamConfig(FrozenConfig):
    """One per-client physical parameter of an adapter family, as in the built-in families."""

    standard: float = Field(description="value at heterogeneity 0")
    low: float = Field(description="lowest value at heterogeneity 1")
    high: float = Field(description="highest value at heterogeneity 1")
    doc: str = Field("", description="what the parameter means")

    @model_validator(mode="after")
    def _ordered(self) -> GymParamConfig:
        if not self.low <= self.standard <= self.high:
            raise KeyProblem("standard", f"must lie in [low, high] = [{self.low:g}, {self.high:g}]", self.standard)
        return self


class GymEnvConfig(FrozenConfig):
    """A Gymnasium id run through the adapter, with the per-client parameters to vary."""

    id: str = Field(description="registered Gymnasium id, e.g. CartPole-v1")
    setter: str | None = Field(
        None, description="'module:function' called as function(env.unwrapped, {name: value}); needed with params"
    )
    setter_dir: str | None = Field(
        None, description="folder searched first for the setter's module (load_config: the config file's folder)"
    )
    params: dict[str, GymParamConfig] = Field(
        default_factory=dict, description="per-client parameters by name: standard, low, high, doc"
    )
    time_limit: int | None = Field(None, ge=1, description="episode length (default: the id's max_episode_steps)")
    solved_return: float | None = Field(None, description="solved return (default: the id's reward_threshold)")

    @field_validator("params")
    @classmethod
    def _not_reserved(cls, value: dict[str, GymParamConfig]) -> dict[str, GymParamConfig]:
        if ACTION_BOUND in value:
            raise ValueError(f"{ACTION_BOUND!r} is reserved (the adapter adds it for continuous actions)")
        return value

    @model_validator(mode="after")
    def _well_formed(self) -> GymEnvConfig:
        # Reading a config never imports: the setter and the id are loaded by Setup.family, on the
        # machine that simulates (a device never does: fedrl.experiment.loading.read_from_server).
        if self.params and self.setter is None:
            raise KeyProblem("setter", "required when params are given ('module:function' that sets them)")
        if self.setter is not None and not SETTER_FORM.fullmatch(self.setter):
            raise KeyProblem("setter", "must look like 'package.module:function'", self.setter)
        return self


class DeviceSpacesConfig(FrozenConfig):
    """The spaces of a fleet whose devices bring their own environments (``family: device``)."""

    obs_dim: int = Field(ge=1, description="length of an observation (a flat Box)")
    discrete: int | None = Field(None, ge=1, description="number of discrete actions")
    continuous: int | None = Field(None, ge=1, description="number of continuous actions")
    action_bound: float | None = Field(None, gt=0, description="continuous actions lie in [-bound, bound]")
    time_limit: int = Field(1000, ge=1, description="episode length the devices' environments use")
    solved_return: float | None = Field(
        None, description="return that counts as solved (reports only; none: no target)"
    )

    @model_validator(mode="after")
    def _one_action_space(self) -> DeviceSpacesConfig:
        if (self.discrete is None) == (self.continuous is None):
            raise KeyProblem("discrete", "give exactly one of discrete (number of actions) and continuous")
        if (self.continuous is None) != (self.action_bound is None):
            raise KeyProblem("action_bound", "required with continuous actions, and only with them")
        return self


class EnvConfig(FrozenConfig):
    """Which environment family the clients run and how their physics differ."""

    family: str = Field(
        "cartpole",
        description="environment family (see `fedrl envs`), 'gym' for the adapter, or 'device' when the devices "
        "bring their own environments",
    )
    heterogeneity: float = Field(1.0, ge=0, le=1, description="0 = identical clients, 1 = widest spread")
    clients: list[dict[str, float]] | None = Field(
        None, description="explicit physical parameters, one mapping per client (overrides heterogeneity)"
    )
    heldout: list[dict[str, float]] | None = Field(
        None,
        min_length=1,
        description="explicit physical parameters of the never-trained clients evaluated at the end (default: "
        "drawn within the range of env.clients when those are listed, else from the family's ranges)",
    )
    gym: GymEnvConfig | None = Field(None, description="the Gymnasium id and its parameters, with family: gym")
    device: DeviceSpacesConfig | None = Field(None, description="the spaces devices' own environments share")

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in FAMILIES and value not in (GYM_FAMILY, DEVICE_FAMILY):
            raise ValueError(f"unknown family; allowed: {', '.join([*FAMILIES, GYM_FAMILY, DEVICE_FAMILY])}")
        return value

    @model_validator(mode="after")
    def _section_of_its_family(self) -> EnvConfig:
        for name, section in ((GYM_FAMILY, self.gym), (DEVICE_FAMILY, self.device)):
            if self.family == name and section is None:
                raise KeyProblem(name, f"required with family: {name}")
            if self.family != name and section is not None:
                raise KeyProblem(name, f"only used with family: {name}, not family: {self.family}")
        return self

    @model_validator(mode="after")
    def _known_client_params(self) -> EnvConfig:
        if self.device is not None:
            names = shown = ()
        elif self.gym is not None:  # the adapter adds action_bound for continuous actions only
            names, shown = (*self.gym.params, ACTION_BOUND), [*self.gym.params, f"{ACTION_BOUND} (continuous actions)"]
        else:
            names = shown = FAMILIES[self.family].param_names
        for key, rows in (("clients", self.clients), ("heldout", self.heldout)):
            for i, row in enumerate(rows or ()):
                unknown = [k for k in row if k not in names]
                if unknown:
                    raise KeyProblem(
                        key, f"client {i} sets unknown parameter {unknown[0]!r}; allowed: {', '.join(shown)}"
                    )
        return self


class FederationConfig(FrozenConfig):
    """How rounds run: who takes part, how long they train, when to stop."""

    n_clients: int = Field(10, ge=1, description="clients in the fleet")
    fraction: float = Field(1.0, gt=0, le=1, description="fraction of clients sampled each round")
    rounds: int = Field(100, ge=1, description="maximum number of rounds")
    local_steps: int | None = Field(1024, ge=1, description="env steps per client per round")
    local_episodes: int | None = Field(None, ge=1, description="episodes per client per round (instead of steps)")
    shard_size: int = Field(100, ge=1, description="clients trained together in one batched call")
    target_return: float | None = Field(
        None, description="stop once the global mean return reaches this (default: the family's solved return)"
    )
    stop_at_target: bool = Field(True, description="stop early at the target return")
    clusters: int = Field(
        1,
        ge=1,
        description="clustered federation (IFCA): this many global models; each round a client plays "
        "cluster_probe_episodes with each, trains the best and sends its update to that model's average",
    )
    cluster_probe_episodes: int = Field(1, ge=1, description="episodes a client plays with each model to choose one")
    checkpoint_every: int = Field(
        1,
        ge=1,
        description="simulator: write a checkpoint every this many rounds, and at the last (a resumed run goes back "
        "to the newest and runs the rounds after it again, with the same numbers where checkpoints hold the "
        "environments' state: not for a Gymnasium adapter family); every client's state is in each",
    )
    regions: int = Field(
        1,
        ge=1,
        description="hierarchical aggregation: the clients in this many regions (client c in region "
        "c * regions // n_clients); each region reduces its clients' updates with strategy.robust and forwards one, "
        "weighted by their env steps (under secure aggregation: by its survivors), and the root averages the "
        "regions' by weight before the server optimiser",
    )

    @model_validator(mode="after")
    def _clusters_fit_fleet(self) -> FederationConfig:
        if self.clusters > self.n_clients:
            raise KeyProblem("clusters", f"more models than the {self.n_clients} clients", self.clusters)
        if self.regions > self.n_clients:
            raise KeyProblem("regions", f"more regions than the {self.n_clients} clients", self.regions)
        return self

    @model_validator(mode="before")
    @classmethod
    def _episodes_replace_steps(cls, data: Any) -> Any:
        """Setting ``local_episodes`` alone unsets the default ``local_steps``."""
        if isinstance(data, dict) and data.get("local_episodes") is not None and "local_steps" not in data:
            return {**data, "local_steps": None}
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> FederationConfig:
        if (self.local_steps is None) == (self.local_episodes is None):
            raise ValueError("set exactly one of local_steps and local_episodes (the other to null)")
        return self

    @property
    def clients_per_round(self) -> int:
        """``fraction * n_clients``, halves rounded up, at least 1 (the expected count under Poisson sampling)."""
        return max(1, int(self.fraction * self.n_clients + 0.5))


class EvalConfig(FrozenConfig):
    """How the global policy is evaluated on every client's environment."""

    every: int = Field(1, ge=1, description="evaluate every this many rounds (and at the last round)")
    episodes: int = Field(4, ge=1, description="episodes per client, each to the env's time limit")
    clients: int | None = Field(
        None,
        ge=2,
        description="evaluate this many clients, drawn afresh at each evaluation, and report the fleet's mean with "
        "a 95 % interval (large fleets); None: every client",
    )
    confirm_episodes: int = Field(
        20,
        ge=0,
        description="when an evaluation reaches the target, evaluate again with this many fresh episodes per "
        "client and stop only if that confirms it (0: stop at the first crossing)",
    )
    greedy: bool = Field(True, description="act greedily (argmax / mean) instead of sampling")
    heldout_clients: int = Field(10, ge=0, description="never-trained clients evaluated at the end")
    adapt_steps: tuple[int, ...] = Field(
        (),
        description="at the end, each held-out client also adapts the final policy for each of these numbers of its "
        "own env steps (the run's learner) before it is evaluated, and the untrained initial policy for as many "
        "(from scratch): how quickly new clients adapt, as meta-learning is judged",
    )

    @field_validator("adapt_steps")
    @classmethod
    def _adapt_steps_sorted(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 0 for k in value) or list(value) != sorted(set(value)):
            raise ValueError(f"must be distinct env step counts >= 0 in increasing order, got {list(value)}")
        return value


class PersonalizationConfig(FrozenConfig):
    """Optional local fine-tuning of the global policy before evaluation."""

    steps: int = Field(0, ge=0, description="fine-tuning env steps per client at each evaluation (0 = off)")


class FleetConfig(FrozenConfig):
    """The simulated fleet: device speeds, links, availability and round deadlines (``fedrl.sim.fleet``)."""

    step_time_s: float = Field(1e-3, gt=0, description="simulated seconds per env step on a speed-1 device")
    speed_heterogeneity: float = Field(0.0, ge=0, le=1, description="speeds spread log-uniformly over [0.25, 1] x at 1")
    straggler_fraction: float = Field(0.0, ge=0, le=1, description="fraction of clients that are stragglers")
    straggler_slowdown: float = Field(5.0, ge=1, description="how many times slower a straggler computes")
    latency_s: float = Field(0.05, ge=0, description="mean one-way link latency per message")
    latency_heterogeneity: float = Field(
        0.0, ge=0, le=1, description="latencies spread uniformly over mean x [1-h, 1+h]"
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="probability a client is unavailable (per round, or per retry in async)"
    )
    availability: Literal["random", "onoff"] = Field("random", description="random dropouts or an on/off pattern")
    on_rounds: int = Field(3, ge=1, description="on/off pattern: rounds up")
    off_rounds: int = Field(1, ge=0, description="on/off pattern: rounds down")
    deadline_s: float | None = Field(None, gt=0, description="sync: updates arriving later are dropped")
    retry_s: float = Field(1.0, gt=0, description="async: how long an unavailable client waits before trying again")


def region_room(config: ExperimentConfig) -> int:
    """The most senders one region can have in a round: its clients (regions differ by one at most),
    and the round's sample."""
    fed = config.federation
    return min(fed.clients_per_round, -(-fed.n_clients // fed.regions))


def secure_too_high(config: ExperimentConfig) -> bool:
    """Whether no region can ever reach secure aggregation's threshold (a count, and at least 2)."""
    secure = config.pipeline.secure_aggregation
    least = secure.threshold if isinstance(secure.threshold, int) else 2
    return secure.enabled and max(2, least) > region_room(config)


class BackendConfig(FrozenConfig):
    """Where a simulation trains its shards of clients (``fedrl.sim.shards``): in this process, or on
    the actors of a Ray cluster (``pip install 'fedrl[ray]'``), which give the same numbers."""

    name: Literal["inprocess", "ray"] = Field(
        "inprocess", description="inprocess: shard after shard in this process; ray: shards on Ray actors in parallel"
    )
    address: str | None = Field(
        None,
        description="ray: the cluster to join, 'auto' (the one `ray start` made on this machine) or HOST:PORT; "
        "null starts a local cluster of this machine's CPUs for the run",
    )
    workers: int | None = Field(
        None, ge=1, description="ray: actors training shards, one CPU each; null: one per CPU of the cluster"
    )
    on_failure: Literal["retry", "drop"] = Field(
        "retry",
        description="ray: when an actor dies mid-round, retry its shard on the restarted actor (same numbers), or "
        "count the shard's clients as dropped for the round",
    )
    retries: int = Field(
        3,
        ge=0,
        description="ray, on_failure retry: attempts after the first before the run fails; on_failure drop: rounds "
        "in a row that may lose every shard before the run fails",
    )


AttackKind = Literal["sign_flip", "scale", "gaussian", "nan", "random_policy"]


class AttackConfig(FrozenConfig):
    """Simulated Byzantine clients: which fraction attacks, and how (``fedrl.sim.attacks``)."""

    fraction: float = Field(0.0, ge=0, lt=1, description="fraction of clients that are malicious")
    kind: AttackKind = Field("sign_flip", description="what a malicious client sends")
    scale: float = Field(1.0, gt=0, description="sign_flip and scale: multiplier of the honest delta")
    sigma: float = Field(1.0, gt=0, description="gaussian: standard deviation of the noise")


def under(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` with ``defaults`` filled in where it sets nothing, mappings merged key by key."""
    merged = dict(defaults)
    for key, value in given.items():
        base = merged.get(key)
        merged[key] = under(base, value) if isinstance(base, Mapping) and isinstance(value, Mapping) else value
    return merged


class ExperimentConfig(FrozenConfig):
    """Everything that defines a run; the same config and seed give the same numbers."""

    name: str = Field("fedrl", description="run name, used in the run directory's name")
    seed: int = Field(0, ge=0, description="the one seed every random stream is derived from")
    env: EnvConfig = EnvConfig()
    learner: LearnerConfig = PPOConfig()
    strategy: StrategyConfig = FedAvgConfig()
    federation: FederationConfig = FederationConfig()
    eval: EvalConfig = EvalConfig()
    personalization: PersonalizationConfig = PersonalizationConfig()
    fleet: FleetConfig = FleetConfig()
    attack: AttackConfig = AttackConfig()
    pipeline: PipelineConfig = PipelineConfig()
    backend: BackendConfig = BackendConfig()
    threads: int | None = Field(
        2,
        ge=1,
        description="torch threads a simulation trains and evaluates with: fixed, because the numbers depend on it "
        "(summation order), so a seed gives the same run on any machine whatever its core count; null: all cores, "
        "fastest, but the numbers then depend on the machine",
    )

    @model_validator(mode="before")
    @classmethod
    def _fleet_size_for_scaffold(cls, data: Any) -> Any:
        """SCAFFOLD's server needs the fleet size N: take it from ``federation.n_clients``."""
        if (
            isinstance(data, dict)
            and isinstance(data.get("strategy"), dict)
            and data["strategy"].get("name") == "scaffold"
        ):
            n = (data.get("federation") or {}).get("n_clients", FederationConfig.model_fields["n_clients"].default)
            data = {**data, "strategy": {"n_clients": n, **data["strategy"]}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _family_learner_defaults(cls, data: Any) -> Any:
        """The env family's defaults for the learner (``EnvFamily.learner_defaults``), under every key the
        config sets: a nested section such as ``normalize`` is merged key by key, so setting one of its
        keys keeps the family's others."""
        if not isinstance(data, dict):
            return data
        env, learner = data.get("env", {}), data.get("learner", {})
        if isinstance(env, EnvConfig):
            family = env.family
        else:
            family = env.get("family", EnvConfig.model_fields["family"].default) if isinstance(env, dict) else None
        name = learner.get("name", PPOConfig.model_fields["name"].default) if isinstance(learner, dict) else None
        if not (isinstance(family, str) and family in FAMILIES and isinstance(name, str)):
            return data  # malformed sections are for validation to name
        defaults = FAMILIES[family].learner_defaults.get(name)
        return {**data, "learner": under(defaults, learner)} if defaults else data

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Keys that moved, named with where they went (``fedrl.experiment.loading.upgrade``
        moves them in a run directory written by an older fedrl)."""
        if not isinstance(data, dict):
            return data
        fleet = data.get("fleet") if isinstance(data.get("fleet"), dict) else {}
        strategy = data.get("strategy") if isinstance(data.get("strategy"), dict) else {}
        if "mode" in fleet:
            raise KeyProblem(
                "fleet.mode",
                "removed: the strategy decides (fedasync and fedbuff are asynchronous, "
                "the others synchronous); delete the key",
                fleet["mode"],
            )
        if strategy.get("name") == "fedprox":
            raise KeyProblem(
                "strategy.name",
                "FedProx is FedAvg on the server with a proximal term on every client: "
                "use strategy.name: fedavg and learner.prox_mu: MU",
                "fedprox",
            )
        moved = [key for key in ROBUST_KEYS if key in strategy]
        if moved:
            raise KeyProblem(f"strategy.{moved[0]}", f"moved to strategy.robust.{moved[0]}", strategy[moved[0]])
        return data

    @model_validator(mode="after")
    def _scaffold_knows_fleet_size(self) -> ExperimentConfig:
        if self.strategy.name == "scaffold" and self.strategy.n_clients != self.federation.n_clients:
            raise ValueError(
                f"strategy.n_clients ({self.strategy.n_clients}) must equal federation.n_clients "
                f"({self.federation.n_clients})"
            )
        return self

    @property
    def asynchronous(self) -> bool:
        """Whether updates are applied as they arrive, weighted by staleness (FedAsync, FedBuff),
        instead of in synchronous rounds: the one answer every runtime asks."""
        return self.strategy.asynchronous

    @property
    def stats_travel(self) -> bool:
        """Whether a deployed device sends the normalisation statistics of what it observed beside its
        update, in the clear: whenever it normalises, except personal statistics under DP or secure
        aggregation, which stay on the device (as in the simulator, where personal statistics never
        travel), and the fleet's under secure aggregation, which travel inside the sum."""
        normalize, pipeline = self.learner.normalize, self.pipeline
        if not normalize.active or pipeline.secure_aggregation.enabled:
            return False
        return not (normalize.stats == "personal" and pipeline.dp.mode != "none")

    @property
    def stats_in_secure_sum(self) -> bool:
        """Whether each client's normalisation statistics travel inside the secure sum, beside its
        masked update (``fedrl.core.securestats``): the fleet's statistics under secure aggregation.
        The server learns only their sum, the fleet's."""
        normalize = self.learner.normalize
        return normalize.active and normalize.stats == "fleet" and self.pipeline.secure_aggregation.enabled

    @model_validator(mode="after")
    def _secure_aggregation_fits_strategy(self) -> ExperimentConfig:
        """Secure aggregation gives the server one sum per synchronous round, so nothing that needs
        each update can run beside it: robust rules, server-side clipping, SCAFFOLD's control deltas."""
        if not self.pipeline.secure_aggregation.enabled:
            return self
        strategy, problem = self.strategy, None
        if self.asynchronous:
            problem = f"it sums a round of clients, and the asynchronous strategy {strategy.name} has no rounds"
        elif strategy.name == "scaffold":
            problem = "SCAFFOLD's control deltas would need a secure sum of their own, which is not implemented"
        elif strategy.robust.rule != "mean":
            problem = (
                "the server sees only the sum of the updates, so strategy.robust.rule must be mean, "
                f"not {strategy.robust.rule!r}"
            )
        elif strategy.robust.norm_bound is not None:
            problem = (
                "the server cannot clip updates it never sees: set pipeline.clip_norm (each client clips) "
                "instead of strategy.robust.norm_bound"
            )
        if problem is not None:
            raise KeyProblem("pipeline.secure_aggregation.enabled", problem, True)
        return self

    @model_validator(mode="after")
    def _secure_rounds_fit_protocol(self) -> ExperimentConfig:
        """A round must sample at least 2 clients and t of them, and its sum must fit in 32 bits."""
        secure, fed = self.pipeline.secure_aggregation, self.federation
        if not secure.enabled:
            return self
        per_round = fed.clients_per_round
        if per_round < 2:
            raise KeyProblem(
                "federation.fraction",
                f"secure aggregation needs at least 2 clients a round; fraction * n_clients gives {per_round}",
                fed.fraction,
            )
        if isinstance(secure.threshold, int) and secure.threshold > per_round:
            raise KeyProblem(
                "pipeline.secure_aggregation.threshold",
                f"exceeds the {per_round} clients a round samples (fraction * n_clients), so no round could be summed",
                secure.threshold,
            )
        try:  # Poisson sampling (central DP) may put the whole fleet in one round
            check_headroom(secure, fed.n_clients if self.pipeline.dp.mode == "central" else per_round)
        except ValueError as exc:
            raise KeyProblem("pipeline.secure_aggregation.scale", str(exc), secure.scale) from None
        return self

    @model_validator(mode="after")
    def _pipeline_fits_run(self) -> ExperimentConfig:
        """The pipeline's stages need synchronous rounds; DP needs a strategy that sees only the
        clipped deltas (central mode: their noised mean) and a budget that covers the rounds."""
        pipeline, mode = self.pipeline, self.pipeline.dp.mode
        if not pipeline.applies_nothing and self.asynchronous:
            raise KeyProblem(
                "pipeline",
                "clipping, compression and DP run in synchronous rounds only, not with the "
                f"asynchronous strategy {self.strategy.name}",
            )
        if mode != "none" and self.strategy.name == "scaffold":
            raise KeyProblem(
                "pipeline.dp.mode", "SCAFFOLD's control deltas would leave clients unclipped and unnoised", mode
            )
        if mode == "central" and self.strategy.robust.rule != "mean":
            raise KeyProblem(
                "pipeline.dp.mode",
                f"central DP hands the strategy one noised mean, so strategy.robust.rule "
                f"must be mean, not {self.strategy.robust.rule!r}",
                mode,
            )
        problem = budget_problem(pipeline, self.federation.fraction, self.federation.rounds)
        if problem is not None:
            raise KeyProblem("pipeline.dp.target_epsilon", problem, pipeline.dp.target_epsilon)
        return self

    @model_validator(mode="after")
    def _clusters_fit_run(self) -> ExperimentConfig:
        """Clustered federation runs synchronous rounds in the clear, one strategy state per model."""
        if self.federation.clusters == 1:
            return self
        problem = None
        if self.asynchronous:
            problem = f"each model is averaged at the end of a round, and {self.strategy.name} has no rounds"
        elif self.pipeline.secure_aggregation.enabled:
            problem = "each model would need a secure sum of its own, which is not implemented"
        elif self.pipeline.dp.mode == "central":
            problem = "central DP's accountant counts one noised mean a round, not one per model"
        elif self.strategy.name == "scaffold":
            problem = "SCAFFOLD's control variates would need one set per model, which is not implemented"
        elif self.personalization.steps or self.eval.adapt_steps:
            problem = "fine-tuning from each client's own model (personalization, eval.adapt_steps) is not implemented"
        elif self.learner.towers in ("critic", "none"):
            problem = "a client chooses among the models' actors, which learner.federate critic or none never trains"
        elif self.pipeline.compression.error_feedback:
            problem = "error feedback keeps one residual per client, which would carry one model's error into another"
        if problem is not None:
            raise KeyProblem("federation.clusters", f"not available here: {problem}", self.federation.clusters)
        return self

    @model_validator(mode="after")
    def _regions_fit_run(self) -> ExperimentConfig:
        """A region forwards one reduced update per round: what needs every client's own update at the root
        (central DP's clipped sum, SCAFFOLD's control deltas, an arrival order, a model choice) cannot pass
        through it yet. Secure aggregation runs within each region."""
        if self.federation.regions == 1:
            return self
        problem = None
        if self.asynchronous:
            problem = f"{self.strategy.name} applies updates as they arrive, and a region forwards one per round"
        elif self.pipeline.dp.mode == "central":
            problem = "central DP noises the sum of every client's clipped update, which the regions do not forward"
        elif self.strategy.name == "scaffold":
            problem = "SCAFFOLD's control deltas are not aggregated by the regions"
        elif self.federation.clusters > 1:
            problem = "clustered federation chooses a model per client, which the regions do not forward"
        elif secure_too_high(self):
            problem = (
                f"secure aggregation's threshold ({self.pipeline.secure_aggregation.threshold}, at least 2) is above "
                f"the {region_room(self)} clients a region can have in a round: no region could ever recover its sum"
            )
        elif self.strategy.robust.rule in ("krum", "multikrum"):
            problem = (
                f"{self.strategy.robust.rule} needs more than 2 x byzantine + 2 updates in every region, and a "
                "region's sample of a round may be smaller (median or trimmed_mean work with any number)"
            )
        if problem is not None:
            raise KeyProblem("federation.regions", f"not available here: {problem}", self.federation.regions)
        return self

    @model_validator(mode="after")
    def _local_only_fits_run(self) -> ExperimentConfig:
        """With ``federate: none`` nothing is aggregated, so central DP would only noise the untrained model."""
        if self.learner.towers == "none" and self.pipeline.dp.mode == "central":
            raise KeyProblem(
                "learner.federate", "none trains each client alone: central DP has nothing to protect", "none"
            )
        return self

    @model_validator(mode="after")
    def _adaptation_has_clients(self) -> ExperimentConfig:
        if self.eval.adapt_steps and not self.eval.heldout_clients:
            raise KeyProblem("eval.adapt_steps", "needs held-out clients to adapt: set eval.heldout_clients", None)
        return self

    @model_validator(mode="after")
    def _normalisation_fits_run(self) -> ExperimentConfig:
        """With the fleet's statistics each client sends those of what it observed beside its update, in
        the clear (under secure aggregation inside the secure sum: ``stats_in_secure_sum``), merged when
        its round closes or, with an asynchronous strategy, when the buffer holding its update is flushed;
        DP, which would have to clip and noise them, cannot run beside it. Personal statistics travel
        nowhere under DP or secure aggregation (``stats_travel``)."""
        normalize = self.learner.normalize
        if not normalize.active:
            return self
        fleet = normalize.stats == "fleet"
        problem = None
        if fleet and self.pipeline.dp.mode != "none":
            problem = (
                "each client's observation statistics would reach the server unclipped and unnoised "
                "(learner.normalize.stats: personal keeps them on the client)"
            )
        elif fleet and self.pipeline.secure_aggregation.enabled and self.federation.clients_per_round > MAX_CLIENTS:
            problem = f"inside the secure sum at most {MAX_CLIENTS} clients' statistics a round add up without wrapping"
        elif not fleet and self.federation.clusters > 1:
            problem = "clients choose their model on the fleet's statistics; personal ones are not implemented there"
        if problem is not None:
            key = "learner.normalize.obs" if normalize.obs else "learner.normalize.reward"
            family = FAMILIES.get(self.env.family)
            if family is not None and "normalize" in family.learner_defaults.get(self.learner.name, {}):
                problem += (
                    f"; {self.env.family}'s defaults for {self.learner.name} normalise, so leaving learner.normalize "
                    "unset turns it on (off: learner.normalize: {obs: false, reward: false})"
                )
            raise KeyProblem(key, f"not available here: {problem}", True)
        return self

    @model_validator(mode="after")
    def _clients_match(self) -> ExperimentConfig:
        if self.env.clients is not None and len(self.env.clients) != self.federation.n_clients:
            raise ValueError(
                f"env.clients lists {len(self.env.clients)} clients but federation.n_clients is "
                f"{self.federation.n_clients}"
            )
        return self
