"""fedrl: federated reinforcement learning for heterogeneous fleets of edge devices.

``fedrl.load_policy(path)`` runs any saved policy (a run directory, an edge agent's or a server's
state directory, an exported artifact) with numpy alone: ``policy.predict(obs)``. Importing
fedrl imports no torch; training does.

Layers (imports point down only): ``core``, ``policy`` <- ``envs``, ``agents``, ``wire`` <-
``experiment`` <- ``sim`` | ``server`` | ``edge`` <- ``cli``. See docs/architecture.md for the picture.
"""

from fedrl.policy import Policy, load_policy

__version__ = "0.1.0"
__all__ = ["Policy", "__version__", "load_policy"]
