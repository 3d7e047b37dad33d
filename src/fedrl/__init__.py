"""fedrl: federated reinforcement learning for heterogeneous fleets of edge devices.

Layers (imports point down only): ``core`` <- ``envs``, ``agents`` <- ``sim`` <- ``cli``.
See ``DESIGN.md`` in the shared folder and ``README.md`` for the picture.
"""

__version__ = "0.1.0"
