"""How quickly clients never trained on adapt a policy: each fine-tunes it on its own environment
for ``k`` env steps with the run's learner, then is evaluated.

This is how meta-learning is judged (Nichol et al., "On First-Order Meta-Learning Algorithms",
2018; Fallah et al., "Personalized Federated Learning with Theoretical Guarantees: A
Model-Agnostic Meta-Learning Approach", NeurIPS 2020): the return of held-out clients after ``k``
local adaptation steps, ``k`` = 0, a few and many, from the learned initialisation against the
same adaptation from scratch (the untrained initial policy). ``k = 0`` is the held-out evaluation
itself; every ``k`` plays the same evaluation episodes.
"""

from __future__ import annotations

import numpy as np

from fedrl.agents import Budget, init_client_state, local_params, make_task, train_local
from fedrl.agents.normalize import init_stats
from fedrl.core.normstats import NormStats
from fedrl.envs.base import reset
from fedrl.experiment.aggregation import HELDOUT_EPISODES_TAG, mean_returns
from fedrl.experiment.setup import Setup
from fedrl.experiment.streams import ADAPT_STREAM


def adapted_returns(setup: Setup, params: np.ndarray, norm: NormStats | None, n_clients: int, steps: int) -> np.ndarray:
    """Mean return per held-out client (the run's first ``n_clients``) after each has adapted
    ``params`` (``(d,)``, with the fleet's normalisation statistics ``norm``) for ``steps`` env steps
    of its own; each keeps the statistics it adds while adapting."""
    env_params = setup.heldout_params(n_clients)
    episodes = setup.config.eval.episodes
    if steps == 0:
        return mean_returns(setup, params, env_params, episodes, HELDOUT_EPISODES_TAG, norm=norm)
    learner = setup.config.learner
    rng = setup.rng(ADAPT_STREAM, steps)
    env_state, _ = reset(setup.family, env_params, learner.n_envs, rng)
    fresh = init_client_state(learner, setup.net, n_clients, uses_control_variates=False)
    task = make_task(setup.net, setup.family, env_params, env_state, params, 0.0, rng, client_state=fresh, norm=norm)
    result = train_local(learner, task, Budget(steps=steps))
    acting = local_params(learner, setup.net, result.params, result.client_state, n_clients)
    own = None if norm is None else norm.broadcast(n_clients).merge(result.norm)
    return mean_returns(setup, acting, env_params, episodes, HELDOUT_EPISODES_TAG, norm=own)


def adaptation_summary(setup: Setup, params: np.ndarray, norm: NormStats | None) -> dict[str, float]:
    """For each ``k`` of ``eval.adapt_steps``: the held-out clients' mean return after adapting the
    final policy (``heldout_adapted_k``) and after adapting the initial policy from scratch
    (``heldout_scratch_k``)."""
    n = setup.config.eval.heldout_clients
    scratch, scratch_norm = setup.initial_params(), init_stats(setup.config.learner.normalize, setup.family.obs_dim)
    scratch_norm = None if scratch_norm is None else scratch_norm.pooled()  # personal: one client's empty row
    out: dict[str, float] = {}
    for k in setup.config.eval.adapt_steps:
        out[f"heldout_adapted_{k}"] = float(adapted_returns(setup, params, norm, n, k).mean())
        out[f"heldout_scratch_{k}"] = float(adapted_returns(setup, scratch, scratch_norm, n, k).mean())
    return out
