"""Update compression: sparsification, unbiased stochastic quantization, error feedback, and the
byte codec that puts a compressed update on the wire.

- top-k: send the ``k`` largest-magnitude coordinates (Aji & Heafield, "Sparse Communication for
  Distributed Gradient Descent", EMNLP 2017). Biased: use it with error feedback. By default the
  fraction is kept in each tensor of the model, as Deep Gradient Compression selects layer by
  layer (Lin et al., ICLR 2018): over the whole vector, the tensors that move most take every
  slot -- in PPO on CartPole the critic, whose value targets run to hundreds, takes all of the
  top 1 % and the actor none.
- random-k: send ``k`` coordinates drawn at random from a seed, so only the seed travels, not the
  indices (Konecny et al., "Federated Learning: Strategies for Improving Communication
  Efficiency", 2016). Without error feedback the kept values are scaled by ``d / k``, which makes
  the estimate unbiased; with error feedback they are not (Stich, Cordonnier & Jaggi, "Sparsified
  SGD with Memory", NeurIPS 2018).
- stochastic quantization to 8 or 4 bits: within each block of values, ``2^b`` evenly spaced
  levels from the block's minimum to its maximum, and each value rounded to one of its two
  neighbouring levels at random so that the expectation is the value itself (the stochastic
  k-level quantization of Suresh et al., "Distributed Mean Estimation with Limited
  Communication", ICML 2017; QSGD, Alistarh et al., NeurIPS 2017, is the same idea on a norm
  scale). One block (one scale) per vector by default, or one every ``block`` values.
- the combination: sparsify, then quantize the kept values.
- error feedback: what compression drops is kept on the client as a residual and added to its
  next update, so nothing is lost, only delayed (Seide et al., "1-Bit Stochastic Gradient
  Descent", Interspeech 2014; Karimireddy et al., "Error Feedback Fixes SignSGD", ICML 2019).
  The residual is explicit state: ``compress_with_feedback`` takes it and returns the new one.

``encode`` turns a ``Compressed`` into bytes and ``decode`` reads them back; the size of an update
on the wire is ``len(encode(c))``, measured, never estimated. The format (little-endian) is a
24-byte header -- version, support kind, bits, dim, k, seed, block -- then the indices (explicit
support only, in the smallest unsigned type that holds ``dim - 1``), then either ``k`` float32
values or, quantized, each block's float32 minimum and level step followed by the codes (one byte
each at 8 bits, two per byte at 4 bits, low nibble first).

All randomness comes from an explicit ``np.random.Generator``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from fedrl.core.frozen import FrozenConfig

_HEADER = struct.Struct("<BBBxIIQI")  # version, support, bits, (pad), dim, k, seed, block
_VERSION = 1
_DENSE, _INDICES, _SEEDED = 0, 1, 2


class CompressionConfig(FrozenConfig):
    """How a client compresses its update; the defaults send it whole, as float32."""

    sparsify: Literal["none", "topk", "randomk"] = Field(
        "none", description="keep every coordinate, the top-k, or a random k"
    )
    ratio: float = Field(
        1.0, gt=0, le=1, description="topk/randomk: fraction of coordinates kept (k = ratio * d, at least 1)"
    )
    bits: Literal[32, 8, 4] = Field(32, description="32: float32 values; 8 or 4: unbiased stochastic quantization")
    per_tensor: bool = Field(True, description="topk: keep the fraction of each tensor (false: of the whole vector)")
    block: int | None = Field(
        None, ge=1, description="values sharing one quantization scale; None: one scale per vector"
    )
    error_feedback: bool = Field(
        False, description="keep what compression drops on the client and add it to the next update"
    )

    @model_validator(mode="after")
    def _options_match(self) -> CompressionConfig:
        """Reject options that the chosen scheme would silently ignore."""
        if self.ratio < 1 and self.sparsify == "none":
            raise ValueError(f"ratio={self.ratio} is only used with sparsify topk or randomk")
        if self.block is not None and self.bits == 32:
            raise ValueError("block is only used with bits 8 or 4")
        if not self.per_tensor and self.sparsify != "topk":  # the default is written out by to_yaml: allow it
            raise ValueError("per_tensor is only used with sparsify topk")
        return self

    @property
    def lossless(self) -> bool:
        """Whether the update travels whole and exact (no sparsification, float32 values)."""
        return self.sparsify == "none" and self.bits == 32


@dataclass(frozen=True)
class Quantized:
    """Values quantized block by block: value ``j`` of block ``b`` is ``lo[b] + codes[j] * step[b]``."""

    codes: np.ndarray  # uint8 (k,): levels 0 .. 2^bits - 1
    lo: np.ndarray  # float32 (blocks,): each block's minimum, level 0
    step: np.ndarray  # float32 (blocks,): the distance between neighbouring levels
    bits: int
    block: int  # values per block; the last block may be shorter


@dataclass(frozen=True)
class Compressed:
    """A compressed vector of length ``dim``: which coordinates travel, and their values."""

    dim: int
    indices: np.ndarray | None  # sorted (k,) coordinates sent; None: all of them, in order
    seed: int | None  # random-k: ``indices`` are drawn from this seed, which travels instead of them
    values: np.ndarray | Quantized  # float32 (k,), or quantized


def kept_count(dim: int, ratio: float) -> int:
    """``k``: ``ratio * dim`` rounded, at least 1."""
    return min(dim, max(1, round(ratio * dim)))


def top_k(x: np.ndarray, ratio: float, sizes: tuple[int, ...]) -> np.ndarray:
    """The sorted indices of the largest ``|x_i|``: ``kept_count(size, ratio)`` of each run of
    consecutive coordinates of the given ``sizes`` (ties broken arbitrarily)."""
    picks, start = [], 0
    for size in sizes:
        k = kept_count(size, ratio)
        picks.append(start + np.argpartition(np.abs(x[start : start + size]), size - k)[size - k :])
        start += size
    return np.sort(np.concatenate(picks))


def random_k(dim: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct coordinates of ``range(dim)``, sorted, drawn from ``seed`` (the receiver draws the same)."""
    return np.sort(np.random.default_rng(seed).choice(dim, size=k, replace=False))


def _level_step(lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """The float32 step between levels, rounded up where needed so that ``lo + levels * step >= hi``."""
    step = ((hi.astype(np.float64) - lo) / levels).astype(np.float32)
    short = lo.astype(np.float64) + levels * step.astype(np.float64) < hi
    return np.where(short, np.nextafter(step, np.float32(np.inf)), step)


def quantize(values: np.ndarray, bits: int, block: int | None, rng: np.random.Generator) -> Quantized:
    """Unbiased stochastic quantization to ``2^bits`` levels per block: ``E[dequantize(q)] = values``.

    A value at fraction ``f`` of the way from level ``l`` to ``l + 1`` becomes ``l + 1`` with
    probability ``f`` and ``l`` otherwise, so its variance is at most ``step^2 / 4``.
    """
    levels = 2**bits - 1
    block = block or values.shape[0]
    starts = np.arange(0, values.shape[0], block)
    lo, hi = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
    step = _level_step(lo, hi, levels)
    which = np.arange(values.shape[0]) // block
    t = (values.astype(np.float64) - lo[which]) / np.where(step > 0, step, 1.0)[which]
    codes = np.floor(t) + (rng.random(values.shape[0]) < t - np.floor(t))
    return Quantized(np.minimum(codes, levels).astype(np.uint8), lo.astype(np.float32), step, bits, block)


def dequantize(q: Quantized) -> np.ndarray:
    """The float32 values a ``Quantized`` stands for."""
    which = np.arange(q.codes.shape[0]) // q.block
    return (q.lo.astype(np.float64)[which] + q.codes * q.step.astype(np.float64)[which]).astype(np.float32)


def dense(x: np.ndarray) -> Compressed:
    """``x`` uncompressed: every coordinate, float32."""
    return Compressed(x.shape[0], None, None, np.asarray(x, dtype=np.float32))


def _support(
    x: np.ndarray, config: CompressionConfig, rng: np.random.Generator, sizes: tuple[int, ...] | None
) -> tuple[np.ndarray, int | None]:
    """The coordinates a sparsifier keeps, and the seed they were drawn from (random-k only)."""
    if config.sparsify == "topk":
        return top_k(x, config.ratio, sizes if config.per_tensor and sizes else (x.shape[0],)), None
    seed = int(rng.integers(2**63))
    return random_k(x.shape[0], kept_count(x.shape[0], config.ratio), seed), seed


def compress(
    x: np.ndarray, config: CompressionConfig, rng: np.random.Generator, sizes: tuple[int, ...] | None = None
) -> Compressed:
    """Sparsify ``x`` (top-k or random-k), then quantize what is kept, as ``config`` says.
    ``sizes``: the sizes of the tensors packed in ``x`` (``ParamSpec.sizes``), for per-tensor top-k."""
    if config.sparsify == "none":
        message = dense(x)
    else:
        indices, seed = _support(x, config, rng, sizes)
        unbiased = seed is not None and not config.error_feedback
        values = x[indices] * np.float32(x.shape[0] / indices.shape[0] if unbiased else 1.0)
        message = Compressed(x.shape[0], indices, seed, values.astype(np.float32))
    if config.bits < 32:
        message = replace(message, values=quantize(message.values, config.bits, config.block, rng))
    return message


def decompress(c: Compressed) -> np.ndarray:
    """The dense float32 ``(dim,)`` vector a compressed one stands for (zero where nothing was sent)."""
    values = dequantize(c.values) if isinstance(c.values, Quantized) else c.values
    if c.indices is None:
        return values.astype(np.float32, copy=True)
    out = np.zeros(c.dim, dtype=np.float32)
    out[c.indices] = values
    return out


def scale(c: Compressed, factor: float) -> Compressed:
    """``c`` standing for ``factor`` times its vector; quantized values keep their codes (their scales move)."""
    if isinstance(c.values, Quantized):
        q = c.values
        values = replace(
            q, lo=(q.lo * np.float64(factor)).astype(np.float32), step=(q.step * np.float64(factor)).astype(np.float32)
        )
    else:
        values = (c.values * np.float64(factor)).astype(np.float32)
    return replace(c, values=values)


def compress_with_feedback(
    x: np.ndarray,
    residual: np.ndarray | None,
    config: CompressionConfig,
    rng: np.random.Generator,
    sizes: tuple[int, ...] | None = None,
    max_norm: float | None = None,
) -> tuple[Compressed, np.ndarray | None]:
    """Compress ``x`` plus the client's residual; returns the message and the new residual.

    With ``config.error_feedback`` the message is ``compress(x + residual)`` and the new residual
    what it leaves out, so the messages sent so far plus the residual add up to the inputs so far.
    Without it, ``residual`` is ignored and returned as it came. ``sizes``: as for ``compress``.
    ``max_norm``: scale the message down to this L2 norm (the sensitivity bound of central DP,
    which compression's rounding and an added residual could otherwise exceed); what the scaling
    removes stays in the residual too.
    """
    corrected = x + residual if config.error_feedback else x
    message = compress(corrected, config, rng, sizes)
    sent = decompress(message)
    norm = float(np.linalg.norm(sent.astype(np.float64)))
    if max_norm is not None and norm > max_norm:
        message = scale(message, max_norm / norm)
        sent = decompress(message)
    return message, ((corrected - sent).astype(np.float32) if config.error_feedback else residual)


def _index_type(dim: int) -> np.dtype:
    """The smallest little-endian unsigned type that holds every index below ``dim``."""
    return np.dtype("<u1" if dim <= 2**8 else "<u2" if dim <= 2**16 else "<u4")


def _pack(codes: np.ndarray, bits: int) -> bytes:
    """Codes as bytes: one per byte at 8 bits, two per byte (low nibble first) at 4 bits."""
    if bits == 8:
        return codes.tobytes()
    padded = np.append(codes, np.uint8(0)) if codes.shape[0] % 2 else codes
    return (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8).tobytes()


def encode(c: Compressed) -> bytes:
    """The bytes of ``c`` on the wire (format in the module docstring)."""
    q = c.values if isinstance(c.values, Quantized) else None
    support = _DENSE if c.indices is None else _SEEDED if c.seed is not None else _INDICES
    k = c.dim if c.indices is None else c.indices.shape[0]
    parts = [_HEADER.pack(_VERSION, support, q.bits if q else 32, c.dim, k, c.seed or 0, q.block if q else 0)]
    if support == _INDICES:
        parts.append(c.indices.astype(_index_type(c.dim)).tobytes())
    if q is None:
        parts.append(c.values.astype("<f4").tobytes())
    else:
        parts += [q.lo.astype("<f4").tobytes(), q.step.astype("<f4").tobytes(), _pack(q.codes, q.bits)]
    return b"".join(parts)


class _Reader:
    """Consecutive arrays read from a byte string."""

    def __init__(self, data: bytes, offset: int):
        self.data, self.offset = data, offset

    def take(self, dtype: str | np.dtype, count: int) -> np.ndarray:
        array = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += array.nbytes
        return array


def _body_bytes(support: int, bits: int, dim: int, k: int, block: int) -> int:
    """The bytes after the header of an encoded update with these header fields."""
    indices = k * np.dtype(_index_type(dim)).itemsize if support == _INDICES else 0
    if bits == 32:
        return indices + 4 * k
    return indices + 8 * math.ceil(k / block) + (k if bits == 8 else (k + 1) // 2)


def decode(data: bytes, dim: int | None = None) -> Compressed:
    """The ``Compressed`` that ``encode`` wrote; ``ValueError`` for bytes it did not write, or
    (when ``dim`` is given) for an update of another length. Sizes are checked against the
    header before anything is allocated, so a forged header cannot make the reader draw or
    allocate more than its bytes hold."""
    if len(data) < _HEADER.size:
        raise ValueError(f"a compressed update has a {_HEADER.size}-byte header, got {len(data)} bytes")
    version, support, bits, length, k, seed, block = _HEADER.unpack_from(data)
    if (
        version != _VERSION
        or support not in (_DENSE, _INDICES, _SEEDED)
        or bits not in (32, 8, 4)
        or (bits == 32) != (block == 0)
    ):
        raise ValueError(f"not a compressed update (version {version}, support {support}, bits {bits}, block {block})")
    if dim is not None and length != dim:
        raise ValueError(f"it stands for {length} parameters, the model has {dim}")
    if not 0 < k <= length or (support == _DENSE and k != length):
        raise ValueError(f"it keeps {k} of {length} values")
    if len(data) - _HEADER.size != _body_bytes(support, bits, length, k, block):
        raise ValueError(f"compressed update of {len(data)} bytes does not match its header")
    read = _Reader(data, _HEADER.size)
    indices = (
        None
        if support == _DENSE
        else random_k(length, k, seed)
        if support == _SEEDED
        else read.take(_index_type(length), k)
    )
    if bits == 32:
        values: np.ndarray | Quantized = read.take("<f4", k).astype(np.float32)
    else:
        blocks = math.ceil(k / block)
        lo, step = read.take("<f4", blocks).astype(np.float32), read.take("<f4", blocks).astype(np.float32)
        raw = read.take(np.uint8, k if bits == 8 else (k + 1) // 2)
        codes = raw if bits == 8 else np.stack([raw & 0x0F, raw >> 4], axis=1).reshape(-1)[:k]
        values = Quantized(codes.astype(np.uint8), lo, step, bits, block)
    return Compressed(
        length, None if indices is None else indices.astype(np.int64), seed if support == _SEEDED else None, values
    )
