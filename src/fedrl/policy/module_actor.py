"""Running the actor of a policy whose card names a user's torch network (``card.network``).

fedrl's own MLP runs with numpy alone (``fedrl.policy.runtime``); a user's network is a torch
module, so running it needs torch and the module's code. A policy file is data: the name on its
card is never imported on the file's say. The caller passes the factory, or allows the name
(``fedrl.policy.usercode.only_code``, the commands' ``--allow-code``). The module is built as the
trainer builds it (``fedrl.agents.modules``: torch seeded with 0, one thread), so buffers the
factory draws at random are the same in every copy. Torch is imported here, when such a policy is
loaded, never by ``import fedrl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedrl.policy.card import PolicyCard
from fedrl.policy.usercode import allowed, import_function


def actor_module(card: PolicyCard, params: np.ndarray, network: Callable[..., Any] | None = None) -> Any:
    """The actor ``torch.nn.Module`` of ``card`` with the actor tensors of ``params`` loaded, in eval
    mode; ``ValueError`` naming what is missing (torch, the module) or does not fit the card."""
    try:
        import torch
    except ModuleNotFoundError:
        raise ValueError(
            f"policy: this policy runs your network {card.network!r}, which needs torch (pip install 'fedrl[train]'); "
            "without torch, export it to ONNX (fedrl export --format onnx) and run that with onnxruntime"
        ) from None
    if network is None and not allowed(card.network):
        raise ValueError(
            f"policy: this policy runs your network {card.network!r}, and a policy file never makes fedrl import code "
            f"by itself: pass the factory (load_policy(path, network=...)) or allow the name (--allow-code "
            f"{card.network})"
        )
    factory = network or import_function(card.network, None, "network")
    module = _built(torch, factory, card)
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


def _built(torch: Any, factory: Callable[..., Any], card: PolicyCard) -> Any:
    """``factory(obs_dim, n_actions)`` built as the trainer builds it, and checked on a zero batch;
    ``ValueError`` naming what the factory raised or returned."""
    n, threads = card.action.n, torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            torch.set_num_threads(1)
            module = factory(card.obs_dim, n)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"returned {type(module).__name__}, not a torch.nn.Module")
        with torch.no_grad():
            shape = tuple(module.eval()(torch.zeros(2, card.obs_dim)).shape)
    except Exception as exc:  # the user's code, whatever it raises
        raise ValueError(f"policy: network {card.network!r}: {type(exc).__name__}: {exc}") from None
    finally:
        torch.set_num_threads(threads)
    if shape != (2, n):
        raise ValueError(f"policy: network {card.network!r} maps (2, {card.obs_dim}) to {shape}, not (2, {n})")
    return module


class ModuleActor:
    """``actor_module`` as a function from float32 observations ``(N, obs_dim)`` to the actor's
    outputs ``(N, A)`` float32, run without autograd; ``module`` is the torch module itself."""

    def __init__(self, card: PolicyCard, params: np.ndarray, network: Callable[..., Any] | None = None):
        self.module = actor_module(card, params, network)  # says what to install when torch is missing
        import torch

        self._torch = torch  # kept for the acting hot path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The actor's outputs for a batch of observations (already normalised)."""
        torch = self._torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return out.numpy().astype(np.float32)
