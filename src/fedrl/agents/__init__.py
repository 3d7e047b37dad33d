"""Local learners over client batches: PPO, REINFORCE, A2C and DQN, plus evaluation.

Only this package knows torch modules; everything it returns is numpy. What an engine calls:

- ``make_net(config, family)``: the network of a learner on an environment family;
- ``init_client_state(config, net, n_clients, uses_control_variates)``: what each client keeps
  between rounds, before its first round;
- ``make_task(...)`` then ``train_local(config, task, budget)``: one round of local training;
- ``federated_mask`` / ``local_params``: which coordinates are sent, and the parameters a client
  acts with (global on federated coordinates, personal elsewhere);
- ``evaluate(net, params, ...)``: returns of greedy (or sampled) policies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

import numpy as np
from pydantic import Discriminator, Tag

from fedrl.agents import a2c, dqn, ppo, reinforce
from fedrl.agents.a2c import A2CConfig
from fedrl.agents.client import federated_mask, init_federation_state, local_params
from fedrl.agents.config import LearnerBase
from fedrl.agents.dqn import DQNConfig
from fedrl.agents.evaluate import evaluate
from fedrl.agents.local import Budget, LocalResult, LocalTask, make_task
from fedrl.agents.nets import PolicyNet, PolicyShape, init_params, policy_spec
from fedrl.agents.ppo import PPOConfig
from fedrl.agents.reinforce import ReinforceConfig
from fedrl.envs.base import EnvFamily


@dataclass(frozen=True)
class LearnerKind:
    """One registered learner: its config record (whose ``name`` default is its key), its training
    loop, and what it needs beyond an actor-critic network."""

    config: type[LearnerBase]
    train: Callable[[Any, LocalTask, Budget], LocalResult]
    critic: bool = True  # actor and critic towers; False: a Q-network alone
    init_state: Callable[[Any, PolicyNet, int], dict[str, np.ndarray]] | None = None  # its own per-client state
    check: Callable[[EnvFamily], None] | None = None  # raises ValueError for a family it cannot learn


LEARNERS: dict[str, LearnerKind] = {
    "ppo": LearnerKind(PPOConfig, ppo.train),
    "reinforce": LearnerKind(ReinforceConfig, reinforce.train),
    "a2c": LearnerKind(A2CConfig, a2c.train),
    "dqn": LearnerKind(DQNConfig, dqn.train, critic=False, init_state=dqn.init_state, check=dqn.check_discrete),
}
"""Every learner by its config's ``name``; the first is the default. Adding a learner is one entry here."""


def _learner_name(value: object) -> str:
    """The ``name`` tag of a learner config; a config that gives none means PPO."""
    return value.get("name", "ppo") if isinstance(value, dict) else getattr(value, "name", "ppo")


LearnerConfig = Annotated[
    Union[tuple(Annotated[kind.config, Tag(name)] for name, kind in LEARNERS.items())],  # noqa: UP007
    Discriminator(_learner_name),
]
"""Any learner's config, chosen by its ``name`` key (PPO when there is none)."""


def train_local(config: LearnerBase, task: LocalTask, budget: Budget) -> LocalResult:
    """Run the learner ``config`` names on ``task`` until ``budget`` is spent."""
    return LEARNERS[config.name].train(config, task, budget)


def make_net(config: LearnerBase, family: EnvFamily) -> PolicyNet:
    """The network ``config``'s learner trains on ``family``: actor and critic towers, or for
    DQN a Q-network alone (``ValueError`` if the learner cannot learn the family's actions)."""
    kind = LEARNERS[config.name]
    if kind.check is not None:
        kind.check(family)
    return PolicyNet(PolicyShape(family.obs_dim, family.action_space, tuple(config.hidden), critic=kind.critic))


def init_client_state(
    config: LearnerBase, net: PolicyNet, n_clients: int, uses_control_variates: bool
) -> dict[str, np.ndarray]:
    """What ``n_clients`` fresh clients keep between rounds, arrays with leading axis ``C``:

    - ``"scaffold.c"`` ``(C, d)`` float32 zeros, when ``uses_control_variates``;
    - ``"personal.params"`` ``(C, k)`` float32 NaN (= "not trained yet, use the global value"),
      ``k`` the non-federated coordinates, when ``federate`` is ``"actor"`` or ``"critic"``;
    - DQN: ``"dqn.replay.{obs,next_obs}"`` ``(C, buffer_size, obs_dim)`` float32,
      ``"dqn.replay.{reward,terminated}"`` ``(C, buffer_size)`` float32, ``"dqn.replay.action"``
      ``(C, buffer_size)`` int64, ``"dqn.replay.{index,size}"`` and ``"dqn.env_steps"`` ``(C,)`` int64.

    Empty for PPO, REINFORCE and A2C with ``federate="all"`` and no control variates.
    """
    state = init_federation_state(config, net, n_clients, uses_control_variates)
    init_state = LEARNERS[config.name].init_state
    if init_state is not None:
        state.update(init_state(config, net, n_clients))
    return state


__all__ = [
    "LEARNERS",
    "A2CConfig",
    "Budget",
    "DQNConfig",
    "LearnerBase",
    "LearnerConfig",
    "LearnerKind",
    "LocalResult",
    "LocalTask",
    "PPOConfig",
    "PolicyNet",
    "PolicyShape",
    "ReinforceConfig",
    "evaluate",
    "federated_mask",
    "init_client_state",
    "init_params",
    "local_params",
    "make_net",
    "make_task",
    "policy_spec",
    "train_local",
]
