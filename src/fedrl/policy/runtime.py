"""``Policy``: a saved policy acting with numpy alone, fast enough for a control loop on a device.

The network is the experiment's actor tower (``fedrl.agents.nets``): ``x -> x @ W_i + b_i`` with
``tanh`` between layers, after the card's observation normalisation, if any. A greedy action is
the argmax of the actor's outputs (logits, or Q values) or its output -- the Gaussian mean --
clipped to the action bound. One observation at a time runs through per-thread buffers that are
allocated once, so the hot path allocates only its result. A policy whose card names a user's own
torch network runs that network's actor instead, with torch (``fedrl.policy.module_actor``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fedrl.policy.card import PolicyCard, check_params
from fedrl.policy.module_actor import ModuleActor


class Norm(NamedTuple):
    """The card's observation normalisation as float32 arrays: ``clip((obs - mean) / std, -clip, clip)``."""

    mean: np.ndarray
    std: np.ndarray  # sqrt(var + eps)
    clip: np.float32


class Layer(NamedTuple):
    """One dense layer of the actor tower: ``x @ weight + bias``, ``weight`` ``(in, out)`` C-contiguous."""

    weight: np.ndarray
    bias: np.ndarray


def actor_layers(card: PolicyCard, params: np.ndarray) -> tuple[Layer, ...]:
    """The actor tower's layers, as views of ``params``; ``ValueError`` when the card's layout
    does not hold a tower from ``obs_dim`` through ``hidden`` to the action outputs."""
    slices = card.slices()
    widths = [card.obs_dim, *card.hidden, card.action.n]
    return tuple(
        Layer(
            _tensor(slices, params, f"actor.{i}.weight", (n_in, n_out)),
            _tensor(slices, params, f"actor.{i}.bias", (n_out,)),
        )
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths))
    )


def _tensor(slices: dict, params: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Tensor ``name`` of ``params``, which the card's layout must hold with ``shape``."""
    if name not in slices:
        raise ValueError(f"policy card: the layout has no {name} (shape {shape})")
    where, have = slices[name]
    if have != shape:
        raise ValueError(f"policy card: {name} has shape {have} in the layout, the network needs {shape}")
    return params[where].reshape(shape)


def _norm(card: PolicyCard) -> Norm | None:
    norm = card.obs_norm
    if norm is None:
        return None
    var = np.asarray(norm.var, dtype=np.float32)
    std = np.sqrt(var + np.float32(norm.eps), dtype=np.float32)
    return Norm(np.asarray(norm.mean, dtype=np.float32), std, np.float32(norm.clip))


def _gaussian(card: PolicyCard, params: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The action bound and standard deviation ``exp(log_std)`` of a continuous policy, or Nones."""
    if card.action.kind != "continuous":
        return None, None
    log_std = _tensor(card.slices(), params, "actor.log_std", (card.action.n,))
    return np.asarray(card.action.bound, dtype=np.float32), np.exp(log_std)


class Policy:
    """A policy ready to act: ``predict`` maps observations to actions as the experiment's
    greedy (or, with ``deterministic=False``, sampling) policy does.

    ``predict`` may be called from several threads at once (each thread has its own buffers),
    but a shared default random generator is not thread-safe: threads that sample pass their own
    ``rng``.
    """

    def __init__(self, card: PolicyCard, params: np.ndarray, network: Callable[..., Any] | None = None):
        """Check ``params`` against ``card`` (length, finite values, digest) and lay out the weights;
        a card that names a user's network builds it (``network``, or the factory imported by name)
        and runs it with torch (``fedrl.policy.module_actor``)."""
        params = check_params(card, params).copy()
        params.flags.writeable = False
        self.card = card
        self.params = params
        self.version = card.version
        self.layers = () if card.network else actor_layers(card, params)
        self.module_actor = ModuleActor(card, params, network) if card.network else None
        self.norm = _norm(card)
        self.bound, self.std = _gaussian(card, params)
        self._low = None if self.bound is None else -self.bound
        self._local = threading.local()
        self._rng = np.random.default_rng()

    def __repr__(self) -> str:
        action = self.card.action
        return (
            f"Policy(env={self.card.env!r}, version={self.version}, obs_dim={self.card.obs_dim}, "
            f"action={action.kind}({action.n}), digest={self.card.digest[:19]}...)"
        )

    def predict(self, obs: np.ndarray, deterministic: bool = True, rng: np.random.Generator | None = None):
        """The action for one observation ``(obs_dim,)`` -- an ``int`` (discrete) or float32 ``(A,)``
        -- or for a batch ``(N, obs_dim)`` -- int64 ``(N,)`` or float32 ``(N, A)``. Greedy unless
        ``deterministic`` is False: then a draw from the policy (softmax of the logits, or the
        Gaussian around the mean; a Q network stays greedy) with ``rng`` (default: the policy's own).
        ``ValueError`` for a wrong shape or a NaN or infinite observation."""
        obs = np.asarray(obs)
        if obs.shape == (self.card.obs_dim,):
            out = self._forward_one(obs)
            if deterministic and self.bound is None:
                return int(out.argmax())  # the hot path: no call more than needed
            action = self._choose(out, deterministic, rng)
            return action if self.bound is not None else int(action)
        return self._choose(self.logits_or_mean(obs), deterministic, rng)

    def logits_or_mean(self, obs_batch: np.ndarray) -> np.ndarray:
        """The actor's raw outputs ``(N, A)`` float32 for observations ``(N, obs_dim)``: logits, Q
        values or Gaussian means (before clipping)."""
        x = np.asarray(obs_batch)
        if x.ndim != 2 or x.shape[1] != self.card.obs_dim:
            raise ValueError(self._shape_error(x.shape))
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(self._finite_error())
        if self.norm is not None:
            x = np.clip((x - self.norm.mean) / self.norm.std, -self.norm.clip, self.norm.clip)
        if self.module_actor is not None:
            return self.module_actor(x)
        *hidden, head = self.layers
        for layer in hidden:
            x = x @ layer.weight
            x += layer.bias
            np.tanh(x, out=x)
        x = x @ head.weight
        x += head.bias
        return x

    def _forward_one(self, obs: np.ndarray) -> np.ndarray:
        """``logits_or_mean`` of one observation, in this thread's buffers (the result included)."""
        x, finite, outs = self._buffers()
        x[...] = obs
        if not np.isfinite(x, out=finite).all():
            raise ValueError(self._finite_error())
        norm = self.norm
        if norm is not None:
            np.subtract(x, norm.mean, out=x)
            np.divide(x, norm.std, out=x)
            np.maximum(x, -norm.clip, out=x)
            np.minimum(x, norm.clip, out=x)
        if self.module_actor is not None:
            return self.module_actor(x[None])[0]
        last = len(self.layers) - 1
        for i, (layer, out) in enumerate(zip(self.layers, outs)):
            np.dot(x, layer.weight, out=out)
            np.add(out, layer.bias, out=out)
            if i < last:
                np.tanh(out, out=out)
            x = out
        return x

    def _buffers(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """This thread's observation, finiteness and layer output buffers, made on its first call."""
        try:
            return self._local.buffers
        except AttributeError:
            n = self.card.obs_dim
            outs = [np.empty(layer.bias.size, dtype=np.float32) for layer in self.layers]
            self._local.buffers = (np.empty(n, dtype=np.float32), np.empty(n, dtype=bool), outs)
            return self._local.buffers

    def _choose(self, out: np.ndarray, deterministic: bool, rng: np.random.Generator | None):
        """Actions from actor outputs ``(..., A)`` (``out`` itself is never changed)."""
        rng = self._rng if rng is None else rng
        if self.bound is None:
            if deterministic or self.card.q_values:
                return out.argmax(-1)
            return _categorical(out, rng)
        if not deterministic:
            out = out + self.std * rng.standard_normal(out.shape, dtype=np.float32)
        action = np.maximum(out, self._low)
        return np.minimum(action, self.bound, out=action)

    def _shape_error(self, shape: tuple) -> str:
        n = self.card.obs_dim
        return f"policy: expected an observation of shape ({n},) or a batch of shape (N, {n}), got shape {shape}"

    def _finite_error(self) -> str:
        return "policy: the observation holds NaN or infinite values (as float32)"


def _categorical(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from ``softmax(logits)``, by inverting the cumulative distribution."""
    weights = np.exp(logits - logits.max(-1, keepdims=True), dtype=np.float64)
    cdf = np.cumsum(weights, -1)
    u = rng.random((*logits.shape[:-1], 1)) * cdf[..., -1:]
    return np.minimum((cdf <= u).sum(-1), logits.shape[-1] - 1)
