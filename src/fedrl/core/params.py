"""The layout of a model's flat parameter vector.

Strategies, compression, privacy and the wire format see a model as one float32 vector of
shape ``(d,)`` (or a stack ``(n_clients, d)``). ``ParamSpec`` records which slice of that
vector is which named tensor, so the vector can be split into named arrays and joined back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParamSpec:
    """Names and shapes of the tensors packed, in order, into a flat float32 vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ValueError(f"{len(self.names)} names but {len(self.shapes)} shapes")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate parameter names in {self.names}")

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> ParamSpec:
        """A spec from an ordered mapping of name to shape."""
        return cls(tuple(shapes), tuple(tuple(int(n) for n in s) for s in shapes.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each tensor."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each tensor in the flat vector."""
        return tuple(int(o) for o in np.cumsum((0, *self.sizes[:-1])))

    @property
    def dim(self) -> int:
        """Length ``d`` of the flat vector."""
        return sum(self.sizes)

    def slice(self, name: str) -> slice:
        """The slice of the flat vector that holds tensor ``name``."""
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.sizes[i])

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views of a flat vector ``(d,)`` or stack ``(n, d)``; a stack gives ``(n, *shape)``."""
        if flat.shape[-1] != self.dim:
            raise ValueError(f"expected last dimension {self.dim}, got shape {flat.shape}")
        lead = flat.shape[:-1]
        return {
            name: flat[..., off : off + size].reshape(lead + shape)
            for name, shape, off, size in zip(self.names, self.shapes, self.offsets, self.sizes)
        }

    def flatten(self, tensors: dict[str, np.ndarray], stacked: bool = False) -> np.ndarray:
        """Join named arrays into one float32 vector (or a stack when ``stacked``)."""
        missing = set(self.names) - set(tensors)
        if missing:
            raise ValueError(f"missing tensors: {sorted(missing)}")
        parts = []
        for name, shape in zip(self.names, self.shapes):
            t = np.asarray(tensors[name], dtype=np.float32)
            expected = t.shape[1:] if stacked else t.shape
            if tuple(expected) != shape:
                raise ValueError(f"tensor {name!r} has shape {t.shape}, spec says {shape}")
            parts.append(t.reshape(t.shape[0], -1) if stacked else t.reshape(-1))
        return np.concatenate(parts, axis=-1)

    def to_json(self) -> dict:
        """A JSON-ready description (for checkpoints and the wire)."""
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}
