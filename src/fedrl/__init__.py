"""fedrl: federated reinforcement learning for heterogeneous fleets of edge devices.

``fedrl.load_policy(path)`` runs any saved policy (a run directory, an edge agent's or a server's
state directory, an exported artifact) with numpy alone: ``policy.predict(obs)``. Importing
fedrl imports no torch; training does.

Layers (imports point down only): ``core``, ``policy`` <- ``envs``, ``agents``, ``wire`` <-
``experiment`` <- ``sim`` | ``server`` | ``edge`` <- ``cli``. See docs/architecture.md for the picture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedrl.policy import Policy, load_policy

__version__ = "0.1.0"
__all__ = ["Policy", "__version__", "load_policy"]


def __getattr__(name: str):
    """``Policy`` and ``load_policy``, imported when first asked for: a command that never loads a
    saved policy (``fedrl run``) does not pay for their imports at start-up."""
    if name in ("Policy", "load_policy"):
        import fedrl.policy

        return getattr(fedrl.policy, name)
    raise AttributeError(f"module 'fedrl' has no attribute {name!r}")
