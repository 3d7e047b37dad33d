"""Reading an experiment: YAML files, ``--set key.path=value`` overrides, and one-line errors.

``parse_config`` turns a nested mapping into an ``ExperimentConfig``; whatever pydantic finds wrong
first becomes one ``ConfigError`` line naming the key, the value and, for an unknown key, the keys
allowed there (following the learner's and strategy's ``name``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from fedrl.agents import LEARNERS
from fedrl.core.robust import CUSTOM_RULE
from fedrl.core.strategies import USER_TAG
from fedrl.experiment.config import (
    GYM_FAMILY,
    ROBUST_KEYS,
    VARIANTS,
    ConfigError,
    ExperimentConfig,
    KeyProblem,
    under,
)


def _config_path(loc: tuple) -> tuple:
    """``loc`` without the tags pydantic inserts for a chosen variant (``learner.ppo.lr``)."""
    return tuple(p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] in VARIANTS and p in VARIANTS[loc[i - 1]]))


def _names(text: str) -> list[str]:
    """The quoted names in one of pydantic's lists (``'a', 'b' or 'c'``)."""
    return re.findall(r"'([^']*)'", text)


def _nearest(given: Any, names: list[str]) -> str:
    """``did you mean 'x'? `` when a name in ``names`` is close to ``given``, else nothing."""
    close = difflib.get_close_matches(str(given), names, n=1, cutoff=0.6) if isinstance(given, str) else []
    return f"did you mean {close[0]!r}? " if close else ""


def describe_error(
    error: dict[str, Any], data: dict[str, Any], root: type[BaseModel] = ExperimentConfig, within: str = ""
) -> str:
    """One line for pydantic's ``error`` about ``data`` (a ``root`` record, itself the section ``within``
    of a larger file): the key, the value, what is wrong, and the nearest valid name for a misspelt
    key or value; never pydantic's own words for it."""
    loc = _config_path(error["loc"])
    value, message, ctx = error.get("input"), error["msg"], error.get("ctx") or {}
    problem = ctx.get("error")
    if isinstance(problem, KeyProblem):
        loc, message = (*loc, problem.key), str(problem)
        value = {} if problem.value is None else problem.value  # a dict is never shown
    elif problem is not None:
        message = str(problem)  # a validator's own words, without pydantic's "Value error, "
    path = (within,) if within else ()
    key = ".".join(str(p) for p in (*path, *loc))
    if error["type"] == "extra_forbidden":
        allowed = _allowed_for(loc[:-1], data, root)
        parent = ".".join(str(p) for p in (*path, *loc[:-1]))
        where = f" under {parent!r}" if parent else ""
        return f"unknown key {key!r}{where}; {_nearest(str(loc[-1]), allowed)}allowed: {', '.join(allowed)}"
    if error["type"] == "union_tag_invalid":
        names, tag = _names(ctx.get("expected_tags", "")), ctx.get("tag")
        at = f" ({key})" if within else ""
        return f"unknown {loc[-1]} {tag!r}{at}; {_nearest(tag, names)}allowed: {', '.join(names)}"
    if error["type"] == "literal_error":
        names = _names(ctx.get("expected", ""))
        return f"{key} = {value!r}: {_nearest(value, names)}allowed: {', '.join(names)}"
    if message.startswith("Input should be"):  # pydantic's type checks: "should be a valid integer"
        message = message.replace("Input should be", "should be", 1).split(", unable to")[0]
    if "allowed: " in message:
        head, names = message.rsplit("allowed: ", 1)
        message = f"{head}{_nearest(value, [n.strip() for n in names.split(',')])}allowed: {names}"
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return " ".join((f"{key}{shown}: {message}" if key else message).split())


def parse_config(data: dict[str, Any], within: str = "") -> ExperimentConfig:
    """Validate a nested mapping into an ``ExperimentConfig`` or raise a one-line ``ConfigError``
    (naming keys under ``within`` when the experiment is a section of a larger file)."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"bad config: {describe_error(exc.errors()[0], data, within=within)}") from None


def _allowed_for(loc: tuple, data: dict[str, Any], root: type[BaseModel]) -> list[str]:
    """The keys allowed at ``loc`` in a ``root`` record, following the learner and strategy ``name`` choices."""
    model = root
    for part in loc:
        if model is ExperimentConfig and part in ("learner", "strategy"):
            model = _variant(part, data)
        elif part in model.model_fields:
            model = _section_model(model.model_fields[part].annotation) or model
    return list(model.model_fields)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The record type of a section annotated ``X``, ``X | None`` or ``dict[str, X]``."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _variant(section: str, data: dict[str, Any]) -> type[BaseModel]:
    variants = VARIANTS[section]
    chosen = (data.get(section) or {}).get("name", next(iter(variants)))
    chosen = USER_TAG if _users(chosen) else chosen
    return variants.get(chosen, next(iter(variants.values())))


EITHER_OR = {"federation.local_episodes": "local_steps", "federation.local_steps": "local_episodes"}
"""Overriding one of these budgets unsets the other, whatever the file says."""


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
    other = EITHER_OR.get(key.strip())
    if other is not None and value is not None:
        node[other] = None
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file's mapping of sections, or a one-line ``ConfigError`` saying why not."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line, with the line and column (1-based) where it found it."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    said = [part for part in (exc.context, exc.problem) if part]
    return where + " ".join("; ".join(said).split())


def load_config(path: Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or start from the defaults), apply overrides, validate."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    if "experiment" in data:  # an experiment has no such key; a server config has it at the top
        raise ConfigError(
            f"{path} is a server config (it has an 'experiment' section): start it with "
            f"`fedrl server --config {path}`; `fedrl run` simulates an experiment file"
        )
    for assignment in overrides:
        data = apply_override(data, assignment)
    if path is not None:
        data = anchor_user_dirs(data, Path(path).parent)
    return parse_config(data)


def anchor_user_dirs(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``data`` with the folders of the user's code (``env.gym.setter_dir``, ``learner.network_dir``
    with a network of the user's, ``learner.learner_dir`` and ``strategy.strategy_dir`` with a loss
    or a strategy of the user's, and ``strategy.robust.rule_dir`` when the rule is one of the
    user's) made absolute, relative to ``folder`` (the folder of the file the experiment was read
    from) and defaulting to it, so a resumed run finds the code from anywhere."""
    data = _anchor(data, ("env", "gym"), "setter_dir", folder, lambda gym: True)
    data = _anchor(data, ("learner",), "network_dir", folder, lambda learner: bool(learner.get("network")))
    data = _anchor(data, ("learner",), "learner_dir", folder, lambda learner: _users(learner.get("name")))
    data = _anchor(data, ("strategy",), "strategy_dir", folder, lambda strategy: _users(strategy.get("name")))
    return _anchor(data, ("strategy", "robust"), "rule_dir", folder, lambda robust: ":" in str(robust.get("rule", "")))


def _users(name: Any) -> bool:
    """Whether a ``name`` is the user's own code (``module:function``)."""
    return isinstance(name, str) and CUSTOM_RULE.fullmatch(name) is not None


def _anchor(data: dict[str, Any], path: tuple[str, ...], key: str, folder: Path, wanted: Callable) -> dict[str, Any]:
    """``data`` with ``path...key`` anchored at ``folder`` when that section is there and ``wanted``."""
    section = data.get(path[0])
    if len(path) > 1:
        if not isinstance(section, dict):
            return data
        return {**data, path[0]: _anchor(section, path[1:], key, folder, wanted)}
    if not isinstance(section, dict) or not wanted(section) or not isinstance(section.get(key, ""), (str, type(None))):
        return data
    anchored = str((folder / (section.get(key) or ".")).resolve())
    return {**data, path[0]: {**section, key: anchored}}


def to_yaml(config: ExperimentConfig) -> str:
    """The fully resolved config as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A resolved config written by an older fedrl (a run directory's, a server's state), in
    today's layout: ``fleet.mode`` dropped (the strategy says it), the robust-aggregation keys
    under ``strategy.robust``, FedProx as FedAvg with ``learner.prox_mu``, and every learner key
    it lacks (one added since) at the learner's own default, never at its env family's
    (``EnvFamily.learner_defaults``), which did not exist when it was written."""
    data = _learner_complete(dict(data))
    fleet, strategy = data.get("fleet"), data.get("strategy")
    if isinstance(fleet, dict):
        data["fleet"] = {k: v for k, v in fleet.items() if k != "mode"}
    if isinstance(strategy, dict):
        robust = {k: strategy[k] for k in ROBUST_KEYS if k in strategy}
        strategy = {k: v for k, v in strategy.items() if k not in ROBUST_KEYS}
        if robust:
            strategy["robust"] = {**robust, **(strategy.get("robust") or {})}
        if strategy.get("name") == "fedprox":
            mu = strategy.pop("mu", 0.01)
            strategy["name"] = "fedavg"
            data["learner"] = {**(data.get("learner") or {}), "prox_mu": mu}
        data["strategy"] = strategy
    return data


def dotted(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one mapping of dotted keys (``{"a.b": value}``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _learner_complete(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every key of a built-in learner section it lacks at the learner's own default."""
    learner = data.get("learner")
    name = learner.get("name", "ppo") if isinstance(learner, dict) else None
    if not isinstance(name, str) or name not in LEARNERS:
        return data
    return {**data, "learner": pinned_learner(learner)}


def pinned_learner(learner: dict[str, Any]) -> dict[str, Any]:
    """A built-in learner's section with every key it leaves unset at the learner's own default, so no
    env family's defaults apply to it (``EnvFamily.learner_defaults``)."""
    name = learner.get("name", "ppo")
    return under(LEARNERS[name].config(name=name).model_dump(mode="json"), learner)


def read_from_server(text: str) -> ExperimentConfig:
    """The experiment a server sent to a device, refused (``ConfigError``) before anything in it
    is imported when it names a Gymnasium id or setter, a robust rule, a strategy of the user's or a
    folder to import from: a device runs its own environment and never aggregates, and it runs the
    network or learner loss an experiment names only when its operator allows them (``--allow-code``,
    ``fedrl.policy.usercode``). ``Setup.for_devices`` is what servers send."""
    data = _sections(text)
    env, strategy = data.get("env"), data.get("strategy")
    if isinstance(strategy, dict) and _users(strategy.get("name")):
        raise ConfigError(
            f"the server's experiment names a strategy for the device to load ({strategy.get('name')!r}); a device "
            "never aggregates: the server must send strategy: fedavg, as servers of this fedrl version do"
        )
    folders = [
        f"{section}.{key}"
        for section, keys in (("learner", ("network_dir", "learner_dir")), ("strategy", ("strategy_dir",)))
        for key in keys
        if isinstance(data.get(section), dict) and data[section].get(key) is not None
    ]
    if folders:
        raise ConfigError(
            f"the server's experiment names folders to import code from ({', '.join(folders)}); a device looks "
            "for the code its operator allows (--allow-code) on its own Python path only"
        )
    robust = strategy.get("robust") if isinstance(strategy, dict) else None
    if isinstance(robust, dict) and ":" in str(robust.get("rule", "")):
        raise ConfigError(
            f"the server's experiment names a robust rule for the device to load ({robust.get('rule')!r}); a device "
            "imports no code a server names (and never aggregates): the server must send rule: mean"
        )
    if isinstance(env, dict) and (env.get("gym") is not None or env.get("family") == GYM_FAMILY):
        gym = env.get("gym") if isinstance(env.get("gym"), dict) else {}
        raise ConfigError(
            "the server's experiment names a Gymnasium environment for the device to load "
            f"(env.gym.id = {gym.get('id')!r}, env.gym.setter = {gym.get('setter')!r}); a device imports no code "
            "a server names: the server must send family: device, as servers of this fedrl version do"
        )
    return parse_config(upgrade(data))


def read_resolved(text: str) -> ExperimentConfig:
    """The experiment in a resolved config that fedrl wrote (``to_yaml``), by this version or an
    older one (see ``upgrade``); ``ConfigError`` in one line when it cannot be used."""
    return parse_config(upgrade(_sections(text)))


def _sections(text: str) -> dict[str, Any]:
    """A resolved config's mapping of sections, or a one-line ``ConfigError``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the experiment config is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the experiment config must be a mapping of sections, got {type(data).__name__}")
    return data
