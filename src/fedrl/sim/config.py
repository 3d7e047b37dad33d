"""The experiment config: one frozen record per component, combined into one record.

Loaded from YAML, overridden with ``--set key=value``, validated by pydantic. Any problem is
reported as one ``ConfigError`` line that names the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedrl.agents import LearnerConfig, PPOConfig, ReinforceConfig
from fedrl.core.strategies import FedAvgConfig, FedAvgMConfig, FedProxConfig, StrategyConfig
from fedrl.envs import FAMILIES


VARIANTS: dict[str, dict[str, type[BaseModel]]] = {
    "learner": {"ppo": PPOConfig, "reinforce": ReinforceConfig},
    "strategy": {"fedavg": FedAvgConfig, "fedavgm": FedAvgMConfig, "fedprox": FedProxConfig},
}


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the key and value."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnvConfig(_Frozen):
    """Which environment family the clients run and how their physics differ."""

    family: str = Field("cartpole", description="environment family (see `fedrl envs`)")
    heterogeneity: float = Field(1.0, ge=0, le=1, description="0 = identical clients, 1 = widest spread")
    clients: list[dict[str, float]] | None = Field(
        None, description="explicit physical parameters, one mapping per client (overrides heterogeneity)"
    )

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in FAMILIES:
            raise ValueError(f"unknown family; allowed: {', '.join(FAMILIES)}")
        return value


class FederationConfig(_Frozen):
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

    @model_validator(mode="after")
    def _one_budget(self) -> FederationConfig:
        if (self.local_steps is None) == (self.local_episodes is None):
            raise ValueError("set exactly one of local_steps and local_episodes (the other to null)")
        return self


class EvalConfig(_Frozen):
    """How the global policy is evaluated on every client's environment."""

    every: int = Field(1, ge=1, description="evaluate every this many rounds (and at the last round)")
    episodes: int = Field(4, ge=1, description="episodes per client, each to the env's time limit")
    greedy: bool = Field(True, description="act greedily (argmax / mean) instead of sampling")
    heldout_clients: int = Field(10, ge=0, description="never-trained clients evaluated at the end")


class PersonalizationConfig(_Frozen):
    """Optional local fine-tuning of the global policy before evaluation."""

    steps: int = Field(0, ge=0, description="fine-tuning env steps per client at each evaluation (0 = off)")


class ExperimentConfig(_Frozen):
    """Everything that defines a run; the same config and seed give the same numbers."""

    name: str = Field("fedrl", description="run name, used in the run directory's name")
    seed: int = Field(0, ge=0, description="the one seed every random stream is derived from")
    env: EnvConfig = EnvConfig()
    learner: LearnerConfig = PPOConfig()
    strategy: StrategyConfig = FedAvgConfig()
    federation: FederationConfig = FederationConfig()
    eval: EvalConfig = EvalConfig()
    personalization: PersonalizationConfig = PersonalizationConfig()

    @model_validator(mode="after")
    def _clients_match(self) -> ExperimentConfig:
        if self.env.clients is not None and len(self.env.clients) != self.federation.n_clients:
            raise ValueError(
                f"env.clients lists {len(self.env.clients)} clients but federation.n_clients is "
                f"{self.federation.n_clients}"
            )
        return self


def _allowed_keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _config_path(loc: tuple) -> tuple:
    """``loc`` without the tags pydantic inserts for a chosen variant (``learner.ppo.lr``)."""
    return tuple(p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] in VARIANTS and p in VARIANTS[loc[i - 1]]))


def _describe(error: dict[str, Any]) -> str:
    loc = _config_path(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1])
        return f"unknown key {key!r}{' under ' + repr(parent) if parent else ''}"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{key}{shown}: {error['msg']}"


def parse_config(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a nested mapping into an ``ExperimentConfig`` or raise a one-line ``ConfigError``."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = _describe(first)
        if first["type"] == "extra_forbidden":
            message += f"; allowed: {_allowed_for(_config_path(first['loc'])[:-1], data)}"
        raise ConfigError(f"bad config: {message}") from None


def _allowed_for(loc: tuple, data: dict[str, Any]) -> str:
    """The keys allowed at ``loc``, following the learner and strategy ``name`` choices."""
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        if part in ("learner", "strategy"):
            model = _variant(part, data)
        elif part in model.model_fields:
            model = model.model_fields[part].annotation
    return _allowed_keys(model)


def _variant(section: str, data: dict[str, Any]) -> type[BaseModel]:
    variants = VARIANTS[section]
    chosen = (data.get(section) or {}).get("name", next(iter(variants)))
    return variants.get(chosen, next(iter(variants.values())))


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.path=value`` applied; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"bad --set {assignment!r}: expected key.path=value")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    out = dict(data)
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[parts[-1]] = value
    return out


def load_config(path: Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or start from the defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    for assignment in overrides:
        data = apply_override(data, assignment)
    return parse_config(data)


def to_yaml(config: ExperimentConfig) -> str:
    """The fully resolved config as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
