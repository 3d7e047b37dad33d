"""A robust aggregation rule of your own: the weighted geometric median of the clients' deltas
(Weiszfeld's algorithm; Pillutla, Kakade & Harchaoui, "Robust Aggregation for Federated Learning",
IEEE TSP 2022). Unlike the coordinate-wise median it treats each delta as one point, and one
far-off delta moves it little however large it is.

Named in a config as ``strategy.robust.rule: "geometric_median:geometric_median"``; fedrl looks the
module up beside the config file (``strategy.robust.rule_dir``).
"""

import numpy as np

ITERATIONS = 50
EPS = 1e-8


def geometric_median(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The point minimising the weighted sum of L2 distances to the rows of ``stack`` ``(n, d)``."""
    weights = weights / weights.sum()
    median = weights @ stack  # start from the weighted mean
    for _ in range(ITERATIONS):
        distances = np.maximum(np.linalg.norm(stack - median, axis=1), EPS)
        pull = weights / distances
        moved = pull @ stack / pull.sum()
        if np.linalg.norm(moved - median) <= EPS * (1 + np.linalg.norm(median)):
            return moved
        median = moved
    return median
