"""Evaluating policies on many clients' environments at once.

Each client's environments play exactly one episode each, from held-out reset seeds, to the
environment's own time limit; actions are greedy by default (argmax or the Gaussian mean).
"""

from __future__ import annotations

import numpy as np
import torch

from fedrl.agents import distributions
from fedrl.agents.nets import BatchedNet
from fedrl.agents.normalize import ObsScale
from fedrl.agents.rollout import env_action
from fedrl.envs.base import EnvFamily, reset, step


@torch.inference_mode()
def evaluate(
    net: BatchedNet,
    params: np.ndarray,
    family: EnvFamily,
    env_params: np.ndarray,
    n_episodes: int,
    seed: int,
    greedy: bool = True,
    obs_norm: ObsScale | None = None,
) -> np.ndarray:
    """Undiscounted returns ``(C, n_episodes)`` of policy ``params`` -- one vector ``(d,)``
    shared by every client, or one per client ``(C, d)`` -- on each client's environment, its
    observations normalised by ``obs_norm`` (fixed, as a saved policy applies it) when given."""
    c = env_params.shape[0]
    flat = torch.from_numpy(np.asarray(params, dtype=np.float32))
    flat = flat.expand(c, -1) if flat.ndim == 1 else flat
    w = net.unpack(flat)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    state, obs = reset(family, env_params, n_episodes, rng)
    returns = np.zeros((c, n_episodes), dtype=np.float64)
    running = np.ones((c, n_episodes), dtype=bool)
    while running.any():
        heads = net.policy(w, torch.from_numpy(obs if obs_norm is None else obs_norm.apply(obs)))
        action = distributions.greedy(heads) if greedy else distributions.sample(heads, gen)
        res = step(family, env_params, state, env_action(family, env_params, action), rng)
        returns += res.reward * running
        running &= ~(res.terminated | res.truncated)
        state, obs = res.state, res.obs
    return returns
