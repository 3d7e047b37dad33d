"""Hyper-parameters the local learners share.

``LearnerBase`` holds what every learner has (DQN included); ``ActorCriticBase`` adds what only
policy-gradient learners with a critic have: the entropy bonus, the value loss, which tower is
federated, and the KL pull toward the global policy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedrl.agents.normalize import NormalizeConfig
from fedrl.core.frozen import FrozenConfig
from fedrl.core.robust import CUSTOM_RULE


class LearnerBase(FrozenConfig):
    """Fields common to all learners; each learner's config extends this record."""

    name: str = Field(description="the learner (each config narrows it to its own name)")

    lr: float = Field(1e-3, gt=0, description="learning rate (also SCAFFOLD's local step size)")
    n_envs: int = Field(8, ge=1, description="parallel environments per client")
    gamma: float = Field(0.99, gt=0, le=1, description="discount factor")
    max_grad_norm: float = Field(0.5, ge=0, description="per-client gradient norm clip (0 = off)")
    hidden: tuple[int, ...] = Field((64, 64), min_length=1, description="hidden layer sizes of each tower")
    network: str | None = Field(
        None,
        pattern=f"^{CUSTOM_RULE.pattern}$",
        description="your own torch network instead of the MLP: 'module:function', called as function(obs_dim, "
        "n_out) for each tower (hidden is then unused; see docs/howto/extending.md)",
    )
    network_dir: str | None = Field(
        None, description="folder searched first for the network's module (load_config: the config file's folder)"
    )
    prox_mu: float = Field(
        0.0, ge=0, description="FedProx's mu: each client adds mu/2 ||w - w_global||^2 to its loss (0 = off)"
    )
    normalize: NormalizeConfig = Field(
        default_factory=NormalizeConfig,
        description="observation normalisation and reward scaling, statistics merged by counts over the fleet",
    )

    @property
    def towers(self) -> str:
        """The towers a client sends: ``all`` (a DQN's Q-network), or an actor-critic's ``federate``."""
        return "all"


class ActorCriticBase(LearnerBase):
    """Fields of the learners with an actor and a critic tower (PPO, REINFORCE, A2C)."""

    ent_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")
    vf_coef: float = Field(0.5, ge=0, description="value loss coefficient")
    federate: Literal["all", "actor", "critic", "none"] = Field(
        "all",
        description="towers sent to the server: all; actor (each client keeps its own critic); critic "
        "(value function aggregation: each client keeps its own actor); none (local training only, the "
        "baseline federation is measured against: nothing is shared, new clients get the untrained policy)",
    )
    kl_coef: float = Field(
        0.0,
        ge=0,
        description="weight of KL(pi_local || pi_global) in each client's loss, pi_global frozen at round start",
    )

    @property
    def towers(self) -> str:
        """The towers a client sends: ``federate``."""
        return self.federate
