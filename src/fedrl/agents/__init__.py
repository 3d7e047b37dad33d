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
from dataclasses import dataclass, replace
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from fedrl.agents import a2c, dqn, ppo, reinforce
from fedrl.agents.a2c import A2CConfig
from fedrl.agents.client import federated_mask, init_federation_state, local_params
from fedrl.agents.config import LearnerBase
from fedrl.agents.dqn import DQNConfig
from fedrl.agents.evaluate import evaluate
from fedrl.agents.local import Budget, LocalResult, LocalTask, make_task
from fedrl.agents.memory import ClientState, DQNMemory
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
    init_state: Callable[[Any, PolicyNet, int], DQNMemory] | None = None  # its own per-client memory
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


def init_client_state(config: LearnerBase, net: PolicyNet, n_clients: int, uses_control_variates: bool) -> ClientState:
    """What ``n_clients`` fresh clients keep between rounds (``fedrl.agents.memory``): SCAFFOLD's
    ``c_i`` (zeros) with control variates, personal towers (NaN: "not trained yet, use the global
    value") under partial federation, DQN's empty replay buffer. Holds nothing for PPO, REINFORCE
    and A2C with ``federate="all"`` and no control variates."""
    state = init_federation_state(config, net, n_clients, uses_control_variates)
    init_state = LEARNERS[config.name].init_state
    return state if init_state is None else replace(state, dqn=init_state(config, net, n_clients))


__all__ = [
    "LEARNERS",
    "A2CConfig",
    "Budget",
    "ClientState",
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
