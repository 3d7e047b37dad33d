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

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

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

Rule = Literal["mean", "median", "trimmed_mean", "krum", "multikrum"]


class RobustConfig(FrozenConfig):
    """How a strategy reduces its clients' deltas to one: optional clipping, then a rule."""

    rule: Rule = Field("mean", description="how deltas are combined: mean, median, trimmed_mean, krum, multikrum")
    trim_ratio: float = Field(0.1, ge=0, lt=0.5, description="trimmed_mean: fraction dropped at each end")
    byzantine: int = Field(0, ge=0, description="krum/multikrum: f, the attackers tolerated (needs n > 2f+2)")
    multikrum_m: int | None = Field(None, ge=1, description="multikrum: how many best deltas to average; None: n - f")
    norm_bound: float | None = Field(None, gt=0, description="clip each delta to this L2 norm first; None: no clip")

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
    # the last of the Literal's choices: "multikrum"
    return multi_krum(stack, config.byzantine, config.multikrum_m, weights)


def combine(config: RobustConfig, updates: list[Update]) -> np.ndarray:
    """The one delta a strategy applies: clip each delta, then reduce them with the rule."""
    return reduce_stack(config, clipped_stack(config, updates), step_weights(updates))
