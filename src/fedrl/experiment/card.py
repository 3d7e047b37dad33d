"""The ``PolicyCard`` of an experiment's network: what every saved policy carries (``fedrl.policy``)."""

from __future__ import annotations

import numpy as np

from fedrl.envs.base import Continuous
from fedrl.experiment.setup import Setup
from fedrl.policy.card import ActionSpec, PolicyCard


def policy_card(
    setup: Setup, params: np.ndarray, version: int | None = None, env_row: np.ndarray | None = None
) -> PolicyCard:
    """The card of ``params`` ``(d,)`` as ``setup``'s network: continuous actions are clipped to
    the bound of ``env_row`` (one client's physical parameters; default: the family's standard row)."""
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
        env=family.name,
        experiment=setup.config.name,
    )
    return card.with_params(params, version=version)
