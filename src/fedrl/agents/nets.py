"""Client-batched actor-critic networks over stacked flat parameter vectors.

This is the glue between ``core.ParamSpec`` flat vectors and torch: the parameters of ``C``
clients are one ``(C, d)`` tensor, and a forward pass is a chain of batched matrix products
(``torch.baddbmm``) over the client axis, so each client's output -- and gradient -- depends
only on its own parameters and data. Actor and critic are separate tanh MLPs with
orthogonal initialisation, as in CleanRL's PPO. A Q-network (DQN) is the actor tower alone,
its outputs read as action values, so greedy evaluation (argmax) serves both kinds. A user's own
torch modules take the towers' place through the same interface (``BatchedNet``;
``fedrl.agents.modules``).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fedrl.core.params import ParamSpec
from fedrl.envs.base import ActionSpace, Continuous, Discrete


@dataclass(frozen=True)
class PolicyShape:
    """The sizes that fix a policy's parameter layout."""

    obs_dim: int
    action_space: ActionSpace
    hidden: tuple[int, ...]
    critic: bool = True  # False for a Q-network: the actor tower's outputs are action values

    @property
    def action_dim(self) -> int:
        """Logits for discrete actions, means for continuous ones."""
        space = self.action_space
        return space.n if isinstance(space, Discrete) else space.dim

    @property
    def continuous(self) -> bool:
        """Whether actions are real vectors (Gaussian policy) rather than choices."""
        return isinstance(self.action_space, Continuous)


def _tower(prefix: str, sizes: list[int]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        shapes[f"{prefix}.{i}.weight"] = (n_in, n_out)
        shapes[f"{prefix}.{i}.bias"] = (n_out,)
    return shapes


def policy_spec(shape: PolicyShape) -> ParamSpec:
    """The flat layout: actor tower, optional log-std, critic tower (when the shape has one)."""
    hidden = list(shape.hidden)
    shapes = _tower("actor", [shape.obs_dim, *hidden, shape.action_dim])
    if shape.continuous:
        shapes["actor.log_std"] = (shape.action_dim,)
    if shape.critic:
        shapes.update(_tower("critic", [shape.obs_dim, *hidden, 1]))
    return ParamSpec.from_shapes(shapes)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread within the block: the QR decomposition behind orthogonal initialisation
    rounds differently with more, and a seed must give the same round-0 model on any machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def init_params(shape: PolicyShape, seed: int) -> np.ndarray:
    """Orthogonal initialisation (gain sqrt 2 inside, 0.01 for the actor head, 1 for the
    critic head), zero biases and log-std, as one float32 vector; the same on any machine."""
    spec = policy_spec(shape)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    n_layers = len(shape.hidden) + 1
    with one_thread():
        for name, dims in zip(spec.names, spec.shapes):
            t = torch.zeros(dims)
            if name.endswith("weight"):
                last = name.split(".")[1] == str(n_layers - 1)
                gain = (0.01 if name.startswith("actor") else 1.0) if last else np.sqrt(2)
                torch.nn.init.orthogonal_(t, gain=gain, generator=gen)
            tensors[name] = t.numpy()
    return spec.flatten(tensors)


class _Tanh(torch.autograd.Function):
    """``tanh`` as ``2 sigmoid(2x) - 1``: the same function to float32 rounding. On the AMD EPYC
    machines of this project's kind, this CPU build's ``torch.tanh`` measured 20x slower than
    ``sigmoid``, the largest single cost of a PPO step. (On an Intel Xeon of the same kind it is
    2-3x faster than this form; changing the form would change every published result.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = _sigmoid_form_(x)  # in place: a layer's pre-activation, which no backward reads
        ctx.mark_dirty(y)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        gy = grad * y
        if torch.is_grad_enabled():  # a backward that builds a graph (double backward) cannot write in place
            return torch.addcmul(grad, gy, y, value=-1.0)
        return torch.addcmul(grad, gy, y, value=-1.0, out=gy)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent, differentiable, fast on CPU (see ``_Tanh``); ``x`` is left as it is."""
    return tanh_(x.clone())


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """``tanh`` written over ``x`` (a layer's fresh pre-activation, which nothing else reads): no new
    tensor, measured as 6 % of a PPO round at 100 clients. Where nothing is to be differentiated
    (acting, evaluation) the same operations without autograd's bookkeeping."""
    if x.requires_grad and torch.is_grad_enabled():
        return _Tanh.apply(x)
    return _sigmoid_form_(x)


def _sigmoid_form_(x: torch.Tensor) -> torch.Tensor:
    """``2 sigmoid(2x) - 1``, written over ``x``: the same operations, in the same order, as ever."""
    return torch.sigmoid(x.mul_(2.0), out=x).mul_(2.0).sub_(1.0)


class _Linear(torch.autograd.Function):
    """``bias + x @ weight`` for a client batch (``torch.baddbmm``), whose backward forms each
    product in the orientation this CPU's BLAS is fast at, for the same bits.

    Autograd's own backward of ``baddbmm`` forms a weight's gradient as ``x^T @ grad``; for a
    layer of one to three outputs (the actor's logits, the critic's value) that product measured
    5-10x slower than its transpose ``(grad^T @ x)^T``. The two sum the same products, and gave the
    same bits wherever the layer's inputs are a multiple of 4 (swept: 2-129 inputs, 1-3 outputs,
    1-2,048 samples, this CPU build of torch); elsewhere the transpose is not taken (``_transposed``),
    so no result changes. The input's gradient through a layer of one output is an outer product,
    written as one: a single multiplication per element, as the one-long sums already were."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = grad * weight.mT if grad.shape[-1] == 1 else torch.bmm(grad, weight.mT)
        if need_w:
            grad_w = torch.bmm(grad.mT, x).mT if _transposed(*weight.shape[1:]) else torch.bmm(x.mT, grad)
        if need_b:
            grad_b = grad.sum(1)
        return grad_x, grad_w, grad_b


def _transposed(n_in: int, n_out: int) -> bool:
    """Whether a layer's weight gradient is formed as ``(grad^T @ x)^T``: narrow layers (1-3 outputs)
    whose inputs are a multiple of 4, where it measured faster and gave autograd's bits (``_Linear``)."""
    return n_out <= 3 < n_in and n_in % 4 == 0


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``bias + x @ weight`` over the client axis: ``x`` ``(C, N, in)``, ``weight`` ``(C, in, out)``,
    ``bias`` ``(C, out)``; differentiable (see ``_Linear``) where a gradient is being recorded."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return _Linear.apply(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(1), x, weight)


class _Unpack(torch.autograd.Function):
    """The named views of a ``(C, d)`` tensor, whose gradients come back as one ``(C, d)`` tensor.

    Slicing ``flat`` once per parameter would make autograd build a zero-filled ``(C, d)``
    gradient for every slice and add them all up: measured as 9 % of a PPO round at 100 clients.
    Here the gradients are concatenated once. The values are the same, since each slice's gradient
    only ever had zeros added to it, except that a zero may now keep a negative sign that adding
    +0.0 used to drop (the runs compared, PPO, DQN, Pendulum and air quality, made the same numbers).
    Unlike slicing, it is not a ``torch.func`` transform's, and its views may not be changed in place."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, spec: ParamSpec) -> tuple[torch.Tensor, ...]:
        ctx.sizes = spec.sizes
        c = flat.shape[0]
        views = zip(spec.shapes, spec.offsets, spec.sizes)
        return tuple(flat[:, off : off + size].reshape((c, *dims)) for dims, off, size in views)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        c = grads[0].shape[0]
        return torch.cat([g.reshape(c, size) for g, size in zip(grads, ctx.sizes)], dim=1), None


class Heads(NamedTuple):
    """Network outputs for a client batch: ``(C, N, A)`` logits or means, ``(C, 1, A)``
    log-std (continuous only) and ``(C, N)`` values (None when the critic was not run)."""

    actor: torch.Tensor
    log_std: torch.Tensor | None
    value: torch.Tensor | None


class BatchedNet(ABC):
    """Batched forward passes over stacked flat vectors for one ``PolicyShape``; holds no parameters.

    A subclass gives the layout (``spec``), the round-0 parameters and ``_tower``, one tower's
    output for every client at once; everything a learner calls is defined here on top of them."""

    shape: PolicyShape
    spec: ParamSpec

    @abstractmethod
    def initial_params(self, seed: int) -> np.ndarray:
        """The round-0 parameters as one float32 vector, fixed by ``seed``."""

    @abstractmethod
    def _tower(self, w: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
        """One tower's (``actor`` or ``critic``) outputs ``(C, N, out)`` for observations ``(C, N, obs_dim)``."""

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named ``(C, *shape)`` views of ``(C, d)``; differentiable with respect to ``flat``."""
        return dict(zip(self.spec.names, _Unpack.apply(flat, self.spec)))

    def heads(self, w: dict[str, torch.Tensor], obs: torch.Tensor) -> Heads:
        """Actor output, log-std and value for observations ``(C, N, obs_dim)``."""
        policy = self.policy(w, obs)
        return policy._replace(value=self.value(w, obs)) if self.shape.critic else policy

    def policy(self, w: dict[str, torch.Tensor], obs: torch.Tensor) -> Heads:
        """The action distribution only (``value`` None): what acting needs."""
        log_std = w["actor.log_std"].unsqueeze(1) if self.shape.continuous else None
        return Heads(self._tower(w, "actor", obs), log_std, None)

    def value(self, w: dict[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
        """Critic output ``(C, N)`` only."""
        return self._tower(w, "critic", obs).squeeze(-1)

    def actor(self, w: dict[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
        """Actor output ``(C, N, A)`` only."""
        return self._tower(w, "actor", obs)


class PolicyNet(BatchedNet):
    """fedrl's own network: tanh MLP towers as chains of ``torch.baddbmm`` over the client axis."""

    def __init__(self, shape: PolicyShape):
        self.shape = shape
        self.spec = policy_spec(shape)
        self.n_layers = len(shape.hidden) + 1

    def initial_params(self, seed: int) -> np.ndarray:
        """``init_params`` of this network's shape."""
        return init_params(self.shape, seed)

    def _tower(self, w: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_layers):
            x = linear(x, w[f"{prefix}.{i}.weight"], w[f"{prefix}.{i}.bias"])
            if i < self.n_layers - 1:
                x = tanh_(x)
        return x
