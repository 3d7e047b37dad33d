"""Saved fedrl policies without the training stack: numpy (and safetensors) only.

``load_policy(path)`` reads a policy -- a ``.npz`` artifact, a safetensors file that carries a
``PolicyCard``, or a run, edge agent or server state directory -- and returns a ``Policy`` whose
``predict(obs)`` acts as the experiment's network does. Importing this package, loading and
acting never import torch, gymnasium or the rest of fedrl; ``fedrl export`` (``fedrl.policy.export``)
writes the same policy as ``.npz``, ONNX or dependency-free C.
"""

from fedrl.policy.card import PolicyCard
from fedrl.policy.files import load_policy
from fedrl.policy.runtime import Policy

__all__ = ["Policy", "PolicyCard", "load_policy"]
