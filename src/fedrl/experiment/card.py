"""The ``PolicyCard`` of an experiment's network: what every saved policy carries (``fedrl.policy``)."""

from __future__ import annotations

import numpy as np

from fedrl.agents.normalize import EPS
from fedrl.core.normstats import NormStats
from fedrl.envs.base import Continuous
from fedrl.experiment.setup import Setup
from fedrl.policy.card import ActionSpec, ObsNorm, PolicyCard


def card_obs_norm(setup: Setup, stats: NormStats | None) -> ObsNorm | None:
    """The observation normalisation a policy trained with the fleet's ``stats`` carries (float32
    values, as evaluation applied them; personal statistics pooled, for a client that has none of its
    own); None when observations are not normalised."""
    if stats is None or stats.obs is None:
        return None
    obs = stats.pooled().obs
    return ObsNorm.of(obs.mean, obs.var, setup.config.learner.normalize.clip_obs, EPS)


def policy_card(
    setup: Setup,
    params: np.ndarray,
    version: int | None = None,
    env_row: np.ndarray | None = None,
    norm: NormStats | None = None,
) -> PolicyCard:
    """The card of ``params`` ``(d,)`` as ``setup``'s network: continuous actions are clipped to
    the bound of ``env_row`` (one client's physical parameters; default: the family's standard row);
    observations normalised by the fleet's ``norm`` statistics, when the learner normalises them."""
    family, shape = setup.family, setup.net.shape
    space = family.action_space
    if isinstance(space, Continuous):
        row = family.standard_params if env_row is None else np.asarray(env_row)
        bound = float(row[family.param_names.index(space.bound_param)])
        action = ActionSpec("continuous", space.dim, (bound,) * space.dim)
    else:
        action = ActionSpec("discrete", space.n)
    spec = setup.net.spec
    card = PolicyCard(
        obs_dim=family.obs_dim,
        action=action,
        hidden=() if setup.config.learner.network else tuple(shape.hidden),
        layout=tuple(zip(spec.names, spec.shapes)),
        network=setup.config.learner.network or "",
        q_values=not shape.critic,
        obs_norm=card_obs_norm(setup, norm),
        env=family.name,
        experiment=setup.config.name,
    )
    return card.with_params(params, version=version)
