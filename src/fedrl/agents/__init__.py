"""Local learners over client batches: PPO, REINFORCE, A2C and DQN, plus evaluation.

Only this package knows torch modules; everything it returns is numpy. What an engine calls:

- ``make_net(config, family, network)``: the network of a learner on an environment family (fedrl's
  MLP, or the modules of a user's ``network`` factory);
- ``init_client_state(config, net, n_clients, uses_control_variates)``: what each client keeps
  between rounds, before its first round;
- ``make_task(...)`` then ``train_local(config, task, budget)``: one round of local training;
- ``federated_mask`` / ``local_params``: which coordinates are sent, and the parameters a client
  acts with (global on federated coordinates, personal elsewhere);
- ``evaluate(net, params, ...)``: returns of greedy (or sampled) policies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from fedrl.agents import a2c, dqn, ppo, reinforce, user
from fedrl.agents.a2c import A2CConfig
from fedrl.agents.client import federated_mask, init_federation_state, local_params
from fedrl.agents.config import LearnerBase
from fedrl.agents.dqn import DQNConfig
from fedrl.agents.evaluate import evaluate
from fedrl.agents.local import Budget, LocalResult, LocalTask, make_task
from fedrl.agents.memory import ClientState, DQNMemory
from fedrl.agents.modules import ModuleNet, NetworkFactory
from fedrl.agents.nets import BatchedNet, PolicyNet, PolicyShape, init_params, policy_spec
from fedrl.agents.ppo import PPOConfig
from fedrl.agents.reinforce import ReinforceConfig
from fedrl.agents.user import LossBatch, Outputs, UserLearnerConfig, register_loss
from fedrl.core.robust import CUSTOM_RULE
from fedrl.core.strategies import USER_TAG
from fedrl.envs.base import EnvFamily


@dataclass(frozen=True)
class LearnerKind:
    """One registered learner: its config record (whose ``name`` default is its key), its training
    loop, and what it needs beyond an actor-critic network."""

    config: type[LearnerBase]
    train: Callable[[Any, LocalTask, Budget], LocalResult]
    critic: bool = True  # actor and critic towers; False: a Q-network alone
    init_state: Callable[[Any, BatchedNet, int], DQNMemory] | None = None  # its own per-client memory
    check: Callable[[EnvFamily], None] | None = None  # raises ValueError for a family it cannot learn


LEARNERS: dict[str, LearnerKind] = {
    "ppo": LearnerKind(PPOConfig, ppo.train),
    "reinforce": LearnerKind(ReinforceConfig, reinforce.train),
    "a2c": LearnerKind(A2CConfig, a2c.train),
    "dqn": LearnerKind(DQNConfig, dqn.train, critic=False, init_state=dqn.init_state, check=dqn.check_discrete),
}
"""Every learner by its config's ``name``; the first is the default. Adding a learner is one entry here.
A user's own (``name: "module:function"``, ``fedrl.agents.user``) is PPO's loop around their loss."""
USER_LEARNER = LearnerKind(UserLearnerConfig, user.train)


def _learner_name(value: object) -> str:
    """The ``name`` tag of a learner config; a config that gives none means PPO."""
    name = value.get("name", "ppo") if isinstance(value, dict) else getattr(value, "name", "ppo")
    return USER_TAG if isinstance(name, str) and CUSTOM_RULE.fullmatch(name) else name


LearnerConfig = Annotated[
    Union[
        (
            *(Annotated[kind.config, Tag(name)] for name, kind in LEARNERS.items()),
            Annotated[UserLearnerConfig, Tag(USER_TAG)],
        )
    ],
    Discriminator(_learner_name),
]
"""Any learner's config, chosen by its ``name`` key (PPO when there is none; a user's loss when it
reads ``module:function``)."""


def learner_kind(config: LearnerBase) -> LearnerKind:
    """The registered learner ``config`` names."""
    return USER_LEARNER if isinstance(config, UserLearnerConfig) else LEARNERS[config.name]


def train_local(config: LearnerBase, task: LocalTask, budget: Budget) -> LocalResult:
    """Run the learner ``config`` names on ``task`` until ``budget`` is spent."""
    return learner_kind(config).train(config, task, budget)


def make_net(config: LearnerBase, family: EnvFamily, network: NetworkFactory | None = None) -> BatchedNet:
    """The network ``config``'s learner trains on ``family``: actor and critic towers, or for
    DQN a Q-network alone; fedrl's MLP of ``config.hidden``, or the modules ``network`` makes
    (``ValueError`` if the learner cannot learn the family's actions, or the modules do not fit)."""
    kind = learner_kind(config)
    if kind.check is not None:
        kind.check(family)
    shape = PolicyShape(family.obs_dim, family.action_space, tuple(config.hidden), critic=kind.critic)
    return PolicyNet(shape) if network is None else ModuleNet(shape, network)


def init_client_state(config: LearnerBase, net: BatchedNet, n_clients: int, uses_control_variates: bool) -> ClientState:
    """What ``n_clients`` fresh clients keep between rounds (``fedrl.agents.memory``): SCAFFOLD's
    ``c_i`` (zeros) with control variates, personal towers (NaN: "not trained yet, use the global
    value") under partial federation, DQN's empty replay buffer. Holds nothing for PPO, REINFORCE
    and A2C with ``federate="all"`` and no control variates."""
    state = init_federation_state(config, net, n_clients, uses_control_variates)
    init_state = learner_kind(config).init_state
    return state if init_state is None else replace(state, dqn=init_state(config, net, n_clients))


__all__ = [
    "LEARNERS",
    "A2CConfig",
    "BatchedNet",
    "Budget",
    "ClientState",
    "DQNConfig",
    "LearnerBase",
    "LearnerConfig",
    "LearnerKind",
    "LocalResult",
    "LocalTask",
    "LossBatch",
    "ModuleNet",
    "NetworkFactory",
    "Outputs",
    "PPOConfig",
    "PolicyNet",
    "PolicyShape",
    "ReinforceConfig",
    "UserLearnerConfig",
    "evaluate",
    "federated_mask",
    "init_client_state",
    "init_params",
    "learner_kind",
    "local_params",
    "make_net",
    "make_task",
    "policy_spec",
    "register_loss",
    "train_local",
]
