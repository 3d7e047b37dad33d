"""Local learners over client batches: PPO and REINFORCE, plus evaluation.

Only this package knows torch modules; everything it returns is numpy.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Discriminator, Tag

from fedrl.agents import ppo, reinforce
from fedrl.agents.evaluate import evaluate
from fedrl.agents.local import Budget, LocalResult, LocalTask, make_task
from fedrl.agents.nets import PolicyNet, PolicyShape, init_params, policy_spec
from fedrl.agents.ppo import PPOConfig
from fedrl.agents.reinforce import ReinforceConfig


def _learner_name(value: object) -> str:
    """The ``name`` tag of a learner config; a config that gives none means PPO."""
    return value.get("name", "ppo") if isinstance(value, dict) else getattr(value, "name", "ppo")


LearnerConfig = Annotated[
    Union[Annotated[PPOConfig, Tag("ppo")], Annotated[ReinforceConfig, Tag("reinforce")]],
    Discriminator(_learner_name),
]


def train_local(config: PPOConfig | ReinforceConfig, task: LocalTask, budget: Budget) -> LocalResult:
    """Run the learner ``config`` names on ``task`` until ``budget`` is spent."""
    if isinstance(config, PPOConfig):
        return ppo.train(config, task, budget)
    return reinforce.train(config, task, budget)


__all__ = [
    "Budget",
    "LearnerConfig",
    "LocalResult",
    "LocalTask",
    "PPOConfig",
    "PolicyNet",
    "PolicyShape",
    "ReinforceConfig",
    "evaluate",
    "init_params",
    "make_task",
    "policy_spec",
    "train_local",
]
