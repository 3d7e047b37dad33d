"""What each client keeps between rounds and never sends, as typed per-client records.

Every array has a leading client axis ``C`` (``fedrl.core.rows`` selects, replaces and names
rows). A field is None when the run does not need it: personal towers only under partial
federation, ``c_i`` only under SCAFFOLD, a replay buffer only for DQN, running discounted returns
only with reward scaling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ReplayArrays:
    """DQN's per-client ring buffers: slot ``index[c]`` is written next, ``size[c]`` slots are
    filled. numpy arrays on the client; the learner works on torch tensors of the same layout."""

    obs: np.ndarray  # (C, capacity, obs_dim) float32
    action: np.ndarray  # (C, capacity) int64
    reward: np.ndarray  # (C, capacity) float32
    next_obs: np.ndarray  # (C, capacity, obs_dim) float32: the obs the step reached (before any reset)
    terminated: np.ndarray  # (C, capacity) float32: 1 where the episode reached a terminal state
    index: np.ndarray  # (C,) int64
    size: np.ndarray  # (C,) int64


def empty_replay(n_clients: int, capacity: int, obs_dim: int) -> ReplayArrays:
    """Zeroed buffers, nothing stored."""
    c, n = n_clients, capacity
    f32, i64 = np.float32, np.int64
    return ReplayArrays(
        np.zeros((c, n, obs_dim), f32),
        np.zeros((c, n), i64),
        np.zeros((c, n), f32),
        np.zeros((c, n, obs_dim), f32),
        np.zeros((c, n), f32),
        np.zeros(c, i64),
        np.zeros(c, i64),
    )


@dataclass(frozen=True)
class DQNMemory:
    """What a DQN client keeps: its replay buffer and its env steps so far (epsilon's schedule)."""

    replay: ReplayArrays = field(metadata={"record": ReplayArrays})
    env_steps: np.ndarray  # (C,) int64


@dataclass(frozen=True)
class ClientState:
    """What C clients keep between rounds (checkpointed under the names in ``metadata``)."""

    personal: np.ndarray | None = field(default=None, metadata={"key": "personal.params"})
    # (C, k) float32, the non-federated coordinates; NaN = not trained yet (act with the global value)
    control: np.ndarray | None = field(default=None, metadata={"key": "scaffold.c"})  # (C, d) SCAFFOLD's c_i
    dqn: DQNMemory | None = field(default=None, metadata={"record": DQNMemory})
    returns: np.ndarray | None = field(default=None, metadata={"key": "normalize.returns"})
    # (C, E) float64: each environment's running discounted return (reward scaling only)
