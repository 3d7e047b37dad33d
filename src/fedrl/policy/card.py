"""The self-description every saved fedrl policy carries: its ``PolicyCard``.

A policy is one flat float32 parameter vector plus a card that says how to run it without any
other part of fedrl: the layout of the vector (named tensors, in order), the hidden sizes and
activation of the MLP towers, the observation and action spaces, the observation normalisation
(if any), where it came from (experiment, environment, version) and the SHA-256 digest of the
parameters. Run directories, checkpoints, the server's model versions and an agent's acting
policy store the card as JSON in their safetensors metadata under ``CARD_KEY``; exported
artifacts (``fedrl export``) carry it too. This module imports numpy only.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FORMAT = "fedrl-policy/1"
CARD_KEY = "fedrl_policy"
ACTIVATIONS = ("tanh",)


@dataclass(frozen=True)
class ActionSpec:
    """The action space: ``n`` choices (``discrete``), or ``n`` reals clipped to ``[-bound, bound]``."""

    kind: str  # "discrete" | "continuous"
    n: int
    bound: tuple[float, ...] | None = None  # continuous only: largest magnitude per action dimension

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"policy card: action.kind must be 'discrete' or 'continuous', got {self.kind!r}")
        if self.n < 1:
            raise ValueError(f"policy card: action.n must be at least 1, got {self.n}")
        if self.kind == "continuous" and (self.bound is None or len(self.bound) != self.n):
            raise ValueError(f"policy card: a continuous action needs {self.n} bounds, got {self.bound}")


@dataclass(frozen=True)
class ObsNorm:
    """Running observation statistics applied before the network: ``clip((obs - mean) / sqrt(var + eps))``."""

    mean: tuple[float, ...]
    var: tuple[float, ...]
    clip: float = 10.0
    eps: float = 1e-8

    @classmethod
    def of(cls, mean: np.ndarray, var: np.ndarray, clip: float = 10.0, eps: float = 1e-8) -> ObsNorm:
        """The normalisation of running statistics (float64 means and variances), rounded to
        float32 as evaluation applies them."""
        return cls(tuple(map(float, mean.astype(np.float32))), tuple(map(float, var.astype(np.float32))), clip, eps)


@dataclass(frozen=True)
class PolicyCard:
    """How to run one flat parameter vector as a policy (see the module docstring)."""

    obs_dim: int
    action: ActionSpec
    hidden: tuple[int, ...]
    layout: tuple[tuple[str, tuple[int, ...]], ...]
    """Every tensor of the flat vector, in order: ``actor.{i}.weight`` ``(in, out)``, ``actor.{i}.bias``,
    ``actor.log_std`` (continuous), and the critic's tensors, which acting ignores."""
    activation: str = "tanh"
    network: str = ""  # a user's torch network, "module:function" (fedrl.agents.modules); "" for fedrl's MLP
    q_values: bool = False  # the actor's outputs are action values (DQN): act by argmax
    obs_norm: ObsNorm | None = None
    version: int | None = None
    env: str = ""
    experiment: str = ""
    digest: str = ""  # "sha256:<hex>" of the parameters' float32 little-endian bytes
    format: str = field(default=FORMAT)

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise ValueError(f"policy card: format {self.format!r} is not {FORMAT!r} (written by a newer fedrl?)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"policy card: activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.obs_norm is not None and not (len(self.obs_norm.mean) == len(self.obs_norm.var) == self.obs_dim):
            raise ValueError(f"policy card: obs_norm must have {self.obs_dim} means and variances")

    @property
    def dim(self) -> int:
        """Length of the flat parameter vector."""
        return sum(math.prod(shape) for _, shape in self.layout)

    def slices(self) -> dict[str, tuple[slice, tuple[int, ...]]]:
        """Each tensor's slice of the flat vector and its shape."""
        out, offset = {}, 0
        for name, shape in self.layout:
            size = math.prod(shape)
            out[name] = (slice(offset, offset + size), shape)
            offset += size
        return out

    def with_params(self, params: np.ndarray, **changes: Any) -> PolicyCard:
        """This card, stamped with the digest of ``params`` (and any other field ``changes``);
        ``ValueError`` when ``params`` does not fit the layout."""
        params = check_params(self, params, verify_digest=False)
        return _replace(self, digest=digest(params), **changes)

    def to_json(self) -> str:
        """The card as one JSON object."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PolicyCard:
        """Read a card written by ``to_json``; ``ValueError`` naming what is wrong."""
        try:
            raw = json.loads(text)
            action = ActionSpec(
                str(raw["action"]["kind"]),
                int(raw["action"]["n"]),
                None if raw["action"].get("bound") is None else tuple(float(b) for b in raw["action"]["bound"]),
            )
            norm = raw.get("obs_norm")
            return cls(
                obs_dim=int(raw["obs_dim"]),
                action=action,
                hidden=tuple(int(h) for h in raw["hidden"]),
                layout=tuple((str(name), tuple(int(n) for n in shape)) for name, shape in raw["layout"]),
                activation=str(raw.get("activation", "tanh")),
                network=str(raw.get("network", "")),
                q_values=bool(raw.get("q_values", False)),
                obs_norm=None
                if norm is None
                else ObsNorm(
                    tuple(map(float, norm["mean"])),
                    tuple(map(float, norm["var"])),
                    float(norm["clip"]),
                    float(norm["eps"]),
                ),
                version=None if raw.get("version") is None else int(raw["version"]),
                env=str(raw.get("env", "")),
                experiment=str(raw.get("experiment", "")),
                digest=str(raw.get("digest", "")),
                format=str(raw.get("format", "")),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"policy card: unreadable ({type(exc).__name__}: {exc})") from None


def _replace(card: PolicyCard, **changes: Any) -> PolicyCard:
    return PolicyCard(**{**{f: getattr(card, f) for f in card.__dataclass_fields__}, **changes})


def digest(params: np.ndarray) -> str:
    """``sha256:<hex>`` of a flat vector's float32 little-endian bytes."""
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(params, dtype="<f4").tobytes()).hexdigest()


def check_params(card: PolicyCard, params: np.ndarray, verify_digest: bool = True) -> np.ndarray:
    """``params`` as a float32 vector that fits ``card``; ``ValueError`` when its length, values or
    (with ``verify_digest`` and a digest on the card) digest do not match."""
    params = np.asarray(params, dtype=np.float32).reshape(-1)
    if params.shape != (card.dim,):
        raise ValueError(f"policy: the card's layout holds {card.dim} parameters, the vector has {params.size}")
    if not np.isfinite(params).all():
        raise ValueError("policy: the parameters hold NaN or infinite values")
    if verify_digest and card.digest and digest(params) != card.digest:
        raise ValueError("policy: the parameters do not match the card's digest (corrupted or altered)")
    return params
