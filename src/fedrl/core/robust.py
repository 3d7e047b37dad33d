"""How a strategy reduces its clients' deltas to one, robustly, and what every strategy config holds.

Every strategy first reduces its clients' deltas to one "average delta" -- FedAvg adds it to
the model, FedAvgM feeds it to momentum, FedAdam to its moments, FedBuff scales it by a server
learning rate. ``RobustConfig`` (a strategy's ``robust`` section) says how that reduction is done
and ``combine`` does it:

1. ``norm_bound``: each delta is first scaled down to an L2 norm of at most this bound (norm
   bounding; Sun et al., "Can You Really Backdoor Federated Learning?", 2019);
2. ``rule``: the clipped deltas are reduced by the weighted mean (FedAvg), the coordinate-wise
   median or trimmed mean (Yin et al., ICML 2018), Krum or multi-Krum (Blanchard et al.,
   NeurIPS 2017) -- see ``fedrl.core.aggregation``.

A rule of your own is named ``"package.module:function"``: ``function(stack, weights)`` gets the
clipped ``(n, d)`` float32 deltas and their env-step weights and returns the one ``(d,)`` delta.
The experiment layer imports it and ``register_rule``s it under that name before the strategy runs.

Weights: ``mean`` and ``multikrum`` weight each delta by its env steps, as FedAvg does.
``median``, ``trimmed_mean`` and ``krum`` ignore the weights: a client reports its own step
count, so a weight would let one attacker outvote the honest majority these rules protect.
Krum and multi-Krum need more than ``2 * byzantine + 2`` updates in a round; fewer raise
``ValueError`` rather than fall back to a rule the experiment did not ask for.

Before any of this a strategy drops updates with NaN or Inf values (``usable_updates``), so a
diverged client can never poison the global model; engines should call ``screen`` themselves
first to report the rejections, since a strategy has no side effects to report them with.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from fedrl.core.aggregation import (
    clip_to_norm,
    coordinate_median,
    krum,
    multi_krum,
    screen,
    trimmed_mean,
    weighted_mean,
)
from fedrl.core.frozen import FrozenConfig
from fedrl.core.update import Update, stack_deltas, step_weights

RULES = ("mean", "median", "trimmed_mean", "krum", "multikrum")
CUSTOM_RULE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # "package.module:function"
RuleFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]
_custom: dict[str, RuleFunction] = {}  # "module:function" -> the function, registered by the experiment layer


def register_rule(name: str, function: RuleFunction) -> None:
    """Make ``function(stack, weights) -> delta`` the rule a config names ``name`` ("module:function")."""
    _custom[name] = function


class RobustConfig(FrozenConfig):
    """How a strategy reduces its clients' deltas to one: optional clipping, then a rule."""

    rule: str = Field(
        "mean", description="how deltas are combined: mean, median, trimmed_mean, krum, multikrum, or module:function"
    )
    trim_ratio: float = Field(0.1, ge=0, lt=0.5, description="trimmed_mean: fraction dropped at each end")
    byzantine: int = Field(0, ge=0, description="krum/multikrum: f, the attackers tolerated (needs n > 2f+2)")
    multikrum_m: int | None = Field(None, ge=1, description="multikrum: how many best deltas to average; None: n - f")
    norm_bound: float | None = Field(None, gt=0, description="clip each delta to this L2 norm first; None: no clip")
    rule_dir: str | None = Field(
        None, description="where a rule of your own is looked up first (default: the config file's folder)"
    )

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        if value not in RULES and not CUSTOM_RULE.fullmatch(value):
            raise ValueError(f"unknown rule; allowed: {', '.join(RULES)}, or package.module:function of your own")
        return value

    @model_validator(mode="after")
    def _rule_options_match_rule(self) -> RobustConfig:
        """Reject Krum options given with a rule that would silently ignore them."""
        if self.byzantine and self.rule not in ("krum", "multikrum"):
            raise ValueError(f"byzantine={self.byzantine} is only used by rule krum or multikrum, not {self.rule!r}")
        if self.multikrum_m is not None and self.rule != "multikrum":
            raise ValueError(f"multikrum_m is only used by rule multikrum, not {self.rule!r}")
        return self


class StrategyConfigBase(FrozenConfig):
    """What every strategy's config holds besides its own fields: its ``robust`` section, and
    whether the strategy is asynchronous (applies updates as they arrive, weighted by staleness)."""

    asynchronous: ClassVar[bool] = False

    name: str = Field(description="the strategy (each config narrows it to its own name)")
    robust: RobustConfig = Field(RobustConfig(), description="how the deltas are reduced: clip, then a rule")


def usable_updates(params: np.ndarray, updates: list[Update]) -> list[Update]:
    """The updates fit to aggregate into ``params``: a wrong length raises, non-finite values are dropped."""
    for u in updates:
        if u.delta.shape != params.shape:
            raise ValueError(
                f"update from client {u.client_id} has {u.delta.shape[0]} parameters, "
                f"the global model has {params.shape[0]}"
            )
    return screen(updates, params.shape[0]).accepted


def clipped_stack(config: RobustConfig, updates: list[Update]) -> np.ndarray:
    """The deltas as an ``(n, d)`` stack, each clipped to ``norm_bound`` when one is set."""
    stack = stack_deltas(updates)
    return stack if config.norm_bound is None else clip_to_norm(stack, config.norm_bound)


def reduce_stack(config: RobustConfig, stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Apply ``config.rule`` to a stack; ``weights`` are used by mean and multikrum only."""
    if config.rule == "mean":
        return weighted_mean(stack, weights)
    if config.rule == "median":
        return coordinate_median(stack)
    if config.rule == "trimmed_mean":
        return trimmed_mean(stack, config.trim_ratio)
    if config.rule == "krum":
        return krum(stack, config.byzantine)
    if config.rule == "multikrum":
        return multi_krum(stack, config.byzantine, config.multikrum_m, weights)
    return _custom_rule(config.rule, stack, weights)


def _custom_rule(name: str, stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A registered rule's delta; ``ValueError`` naming the rule when it is not registered or
    returns anything but ``d`` finite numbers."""
    if name not in _custom:
        raise ValueError(f"rule {name!r} is not registered (the experiment's Setup loads it)")
    try:
        delta = np.asarray(_custom[name](stack.copy(), weights.copy()), dtype=np.float32)
    except Exception as exc:
        raise ValueError(f"rule {name} raised {type(exc).__name__}: {exc}") from exc
    if delta.shape != stack.shape[1:] or not np.isfinite(delta).all():
        raise ValueError(
            f"rule {name} returned {delta.shape} values (finite: {np.isfinite(delta).all()}); "
            f"it must return {stack.shape[1]} finite numbers, one delta"
        )
    return delta


def combine(config: RobustConfig, updates: list[Update]) -> np.ndarray:
    """The one delta a strategy applies: clip each delta, then reduce them with the rule."""
    return reduce_stack(config, clipped_stack(config, updates), step_weights(updates))
