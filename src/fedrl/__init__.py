"""fedrl: federated reinforcement learning for heterogeneous fleets of edge devices.

Layers (imports point down only): ``core`` <- ``envs``, ``agents``, ``wire`` <- ``experiment`` <-
``sim`` | ``server`` | ``edge`` <- ``cli``. See docs/architecture.md for the picture.
"""

__version__ = "0.1.0"
