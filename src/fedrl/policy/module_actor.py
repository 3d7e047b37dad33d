"""Running the actor of a policy whose card names a user's torch network (``card.network``).

fedrl's own MLP runs with numpy alone (``fedrl.policy.runtime``); a user's network is a torch
module, so running it needs torch and the module's code: the factory is imported by its
``"module:function"`` name (from the working directory, then ``sys.path``) unless the caller
passes it. Torch is imported here, when such a policy is loaded, never by ``import fedrl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedrl.policy.card import PolicyCard
from fedrl.policy.usercode import import_function


def actor_module(card: PolicyCard, params: np.ndarray, network: Callable[..., Any] | None = None) -> Any:
    """The actor ``torch.nn.Module`` of ``card`` with the actor tensors of ``params`` loaded, in eval
    mode; ``ValueError`` naming what is missing (torch, the module) or does not fit the card."""
    try:
        import torch
    except ModuleNotFoundError:
        raise ValueError(
            f"policy: this policy runs your network {card.network!r}, which needs torch (pip install 'fedrl[train]'); "
            "a device without torch can run it exported to ONNX (fedrl export --format onnx)"
        ) from None
    factory = network or import_function(card.network, None, "network")
    module = factory(card.obs_dim, card.action.n)
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"policy: network {card.network!r} must return a torch.nn.Module, got {type(module).__name__}")
    slices = card.slices()
    state = {}
    for name, p in module.named_parameters():
        key = f"actor.{name}"
        if key not in slices or slices[key][1] != tuple(p.shape):
            have = slices[key][1] if key in slices else "nothing"
            raise ValueError(
                f"policy: network {card.network!r} has {key} of shape {tuple(p.shape)}; the card's layout holds {have}"
            )
        state[name] = torch.from_numpy(params[slices[key][0]].reshape(p.shape).copy())
    expected = {name for name in slices if name.startswith("actor.") and name != "actor.log_std"}
    if expected != {f"actor.{name}" for name in state}:
        raise ValueError(f"policy: network {card.network!r} does not have the card's actor tensors {sorted(expected)}")
    module.load_state_dict(state, strict=False)
    return module.eval()


class ModuleActor:
    """``actor_module`` as a function from float32 observations ``(N, obs_dim)`` to the actor's
    outputs ``(N, A)`` float32, run without autograd; ``module`` is the torch module itself."""

    def __init__(self, card: PolicyCard, params: np.ndarray, network: Callable[..., Any] | None = None):
        self.module = actor_module(card, params, network)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The actor's outputs for a batch of observations (already normalised)."""
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return out.numpy().astype(np.float32)
