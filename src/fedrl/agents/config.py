"""Hyper-parameters every local learner shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LearnerBase(BaseModel):
    """Fields common to all learners; each learner's config extends this record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    n_envs: int = Field(8, ge=1, description="parallel environments per client")
    gamma: float = Field(0.99, gt=0, le=1, description="discount factor")
    ent_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")
    vf_coef: float = Field(0.5, ge=0, description="value loss coefficient")
    max_grad_norm: float = Field(0.5, ge=0, description="per-client gradient norm clip (0 = off)")
    hidden: tuple[int, ...] = Field((64, 64), min_length=1, description="hidden layer sizes of actor and critic")
