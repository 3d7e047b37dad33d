"""A strategy of your own for fedrl: ``strategy.name: "server_nesterov:NesterovMomentum"``.

A strategy of the user's is a server optimiser. fedrl reduces each round's client deltas with the
configured robust rule (the env-step-weighted mean by default, after any clipping and DP noise) and
hands this object the result; it keeps its own state as named arrays, which fedrl checkpoints with
the model, so a resumed run or a restarted server continues where it stopped.
"""

import numpy as np


class NesterovMomentum:
    """Server momentum with Nesterov's look-ahead: ``v = beta v + delta``,
    ``params += lr (delta + beta v)`` (FedAvgM with the Nesterov form of the step)."""

    def __init__(self, lr: float = 1.0, momentum: float = 0.9):
        self.lr, self.momentum = lr, momentum

    def init(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """No momentum before the first round."""
        return {"velocity": np.zeros_like(params)}

    def step(self, state: dict, params: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, dict]:
        """The new global parameters and state from the round's combined delta."""
        velocity = self.momentum * state["velocity"] + delta
        return params + self.lr * (delta + self.momentum * velocity), {"velocity": velocity}
