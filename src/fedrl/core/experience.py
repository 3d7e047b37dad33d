"""What a device records while it acts: consecutive transitions of one environment.

The acting loop (``fedrl.edge``) fills it without torch; the learners (``fedrl.agents.experience``)
learn from it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Experience(NamedTuple):
    """``T`` transitions of one environment, in the order they happened."""

    obs: np.ndarray  # float32 (T, obs_dim): the observation acted on
    action: np.ndarray  # int64 (T,) or float32 (T, A): the action taken (before clipping)
    reward: np.ndarray  # float32 (T,)
    terminated: np.ndarray  # bool (T,)
    truncated: np.ndarray  # bool (T,)
    next_obs: np.ndarray  # float32 (T, obs_dim): the observation the step reached, before any reset

    @property
    def steps(self) -> int:
        """Number of transitions."""
        return len(self.reward)

    @property
    def episodes(self) -> int:
        """Episodes that ended within these transitions."""
        return int((self.terminated | self.truncated).sum())
