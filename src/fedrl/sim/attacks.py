"""Simulated Byzantine clients: what a malicious or broken device might send.

A chosen fraction of clients is malicious for the whole run; which ones is known to the
simulator only, never to the strategy. Their honest update is replaced by:

- ``sign_flip``: ``-scale * delta`` (Fang et al., USENIX Security 2020; FedPG-BR's "sign flipping");
- ``scale``: ``scale * delta`` (a boosted update);
- ``gaussian``: pure noise ``N(0, sigma^2)`` of the same size (FedPG-BR's "random noise");
- ``nan``: NaN and Inf values (a broken device);
- ``random_policy``: the delta that moves the global model to a fixed random policy
  (FedPG-BR's "random action" attacker acts with a policy unrelated to the task).
"""

from __future__ import annotations

import numpy as np

from fedrl.experiment.config import AttackConfig


def malicious_clients(config: AttackConfig, n_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask ``(n_clients,)`` of the attackers, fixed for a run."""
    mask = np.zeros(n_clients, dtype=bool)
    mask[rng.choice(n_clients, round(config.fraction * n_clients), replace=False)] = True
    return mask


def attack(config: AttackConfig, delta: np.ndarray, target: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """The float32 vector an attacker sends instead of its honest ``delta``; ``target`` is
    ``random_policy - global_params`` for the random-policy attack."""
    if config.kind == "sign_flip":
        out = -config.scale * delta
    elif config.kind == "scale":
        out = config.scale * delta
    elif config.kind == "gaussian":
        out = rng.normal(0.0, config.sigma, delta.shape)
    elif config.kind == "nan":
        out = delta.copy()
        out[::2] = np.nan
        out[1::2] = np.inf
    else:
        out = target
    return np.asarray(out, dtype=np.float32)
