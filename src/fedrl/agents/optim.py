"""One optimiser step for a client batch: per-client Adam, proximal pull, per-client clipping.

``torch.optim.Adam`` is element-wise, so one Adam over the stacked ``(C, d)`` tensor keeps
separate first and second moments for every client. Gradient-norm clipping and the FedProx
proximal term are applied per client (row), never across the batch.
"""

from __future__ import annotations

import torch


def make_optimizer(flat: torch.Tensor, lr: float) -> torch.optim.Adam:
    """Adam over the stacked client parameters (eps 1e-5, as is usual for PPO)."""
    return torch.optim.Adam([flat], lr=lr, eps=1e-5)


def apply_gradient(
    optimizer: torch.optim.Adam,
    flat: torch.Tensor,
    loss: torch.Tensor,
    anchor: torch.Tensor,
    prox_mu: float,
    max_grad_norm: float,
) -> None:
    """Backpropagate ``loss`` (a sum of per-client losses), add ``prox_mu * (w - anchor)``
    (the gradient of FedProx's ``mu/2 ||w - w_global||^2``), clip each client's gradient to
    ``max_grad_norm`` and take an Adam step."""
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    grad = flat.grad
    if prox_mu > 0:
        grad.add_(flat.detach() - anchor, alpha=prox_mu)
    if max_grad_norm > 0:
        norms = grad.norm(dim=1, keepdim=True)
        grad.mul_(torch.clamp(max_grad_norm / (norms + 1e-6), max=1.0))
    optimizer.step()
