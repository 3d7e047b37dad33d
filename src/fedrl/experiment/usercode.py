"""The user's own strategy and learner loss, named ``"module:function"`` in a config: imported,
made and checked here, and wrapped so that an exception raised in their code reads as one line
naming their file and line (``UserCodeError``), whichever runtime calls it. (Networks are checked
where they are built, ``fedrl.agents.modules``.)"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrl.agents import LossBatch, Outputs, UserLearnerConfig
from fedrl.core.errors import UserCodeError
from fedrl.core.strategies import ServerOptimizer, UserStrategyConfig
from fedrl.envs.gym_adapter import LIBRARIES, blame
from fedrl.experiment.config import ConfigError
from fedrl.policy.usercode import import_function

THEIRS_NOT = (*LIBRARIES, Path(np.__file__).resolve().parent, Path(torch.__file__).resolve().parent)
"""Folders whose frames are never the user's when an error is blamed on a line."""


class BlamedOptimizer:
    """A user's server optimiser whose exceptions become one-line ``UserCodeError``s."""

    def __init__(self, name: str, optimizer: Any):
        self.name, self.optimizer = name, optimizer

    def init(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """The optimiser's ``init``."""
        return self._call("init", params)

    def step(self, state: dict[str, np.ndarray], params: np.ndarray, delta: np.ndarray) -> tuple:
        """The optimiser's ``step``."""
        return self._call("step", state, params, delta)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.optimizer, method)(*args)
        except Exception as exc:  # anything the user's code raises
            raise blame(f"strategy {self.name}: {method}", exc, THEIRS_NOT) from None


def load_strategy(config: UserStrategyConfig) -> ServerOptimizer:
    """The optimiser ``config.name`` makes from ``config.options``; ``ConfigError`` naming the key
    when it cannot be imported, raises, or lacks ``init`` and ``step``."""
    key = f"bad config: strategy.name = {config.name!r}"
    try:
        factory = import_function(config.name, config.strategy_dir, "strategy")
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    try:
        inspect.signature(factory).bind(**config.options)
    except TypeError as exc:
        raise ConfigError(f"{key}: strategy.options do not fit it: {exc}") from None
    except ValueError:  # a callable without a signature to read: let the call say
        pass
    try:
        optimizer = factory(**config.options)
    except Exception as exc:  # the user's code
        raise ConfigError(f"{key}: {blame('making it', exc, THEIRS_NOT)}") from None
    missing = [method for method in ("init", "step") if not callable(getattr(optimizer, method, None))]
    if missing:
        raise ConfigError(f"{key}: it returned {type(optimizer).__name__}, which has no {' or '.join(missing)} method")
    return BlamedOptimizer(config.name, optimizer)


def load_loss(config: UserLearnerConfig) -> Callable[[Outputs, LossBatch, dict[str, Any]], torch.Tensor]:
    """The loss ``config.name`` names, whose exceptions become one-line ``UserCodeError``s;
    ``ConfigError`` naming the key when it cannot be imported."""
    try:
        loss = import_function(config.name, config.learner_dir, "learner loss")
    except ValueError as exc:
        raise ConfigError(f"bad config: learner.name = {config.name!r}: {exc}") from None

    def blamed(out: Outputs, batch: LossBatch, options: dict[str, Any]) -> torch.Tensor:
        try:
            return loss(out, batch, options)
        except Exception as exc:  # anything the user's code raises
            raise blame(f"learner {config.name}", exc, THEIRS_NOT) from None

    return blamed


__all__ = ["BlamedOptimizer", "UserCodeError", "load_loss", "load_strategy"]
