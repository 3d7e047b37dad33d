"""The update pipeline: the stages every client update passes through between local training and
the strategy, declared in the experiment config's ``pipeline`` section.

Client side, one update at a time (``client_message``)::

    delta -> clip to C -> (local DP: + N(0, (zC)^2)) -> compress, with error feedback
          -> (central DP: scale the message to norm <= C) -> encode -> [secure-aggregation mask] -> bytes

Server side, on the whole round at once::

    bytes -> [secure-aggregation unmask: the sum only] -> decode_update -> (central DP: central_mean,
          the noised sum over the expected number of clients) -> strategy

The DP noise comes before compression, not after as one might draw it: compression is then
post-processing of a private vector and cannot weaken the guarantee (top-k's choice of
coordinates would otherwise be released bare), and noise added after sparsifying or quantizing
would make the update dense and unquantized again. In central mode the message is scaled to
norm ``C`` after compression because the residual that error feedback adds, and stochastic
rounding, can push it past the clip; ``C`` is the sensitivity the server's noise is calibrated to.

Secure aggregation (``fedrl.core.secagg``, ``secure_aggregation.enabled``) goes where the
brackets are: each client masks its (clipped, locally noised) update as fixed-point integers and
the server learns only their sum (``secure_mean``). Its messages must add up as integers, so it
quantizes the update itself on one scale shared by all clients and needs uncompressed messages:
top-k and random-k supports differ from client to client, and 8- or 4-bit codes have a scale per
client. The server then sees no single update, so it can only take the mean: each survivor
counts equally (under a steps budget every client takes the same steps, so this is FedAvg's
weighting), and with central DP the noise goes on the unmasked sum -- which the server sees
before it adds the noise.

The clip is DP-FedAvg's (McMahan et al., ICLR 2018); compression and DP are described in
``fedrl.core.compress`` and ``fedrl.core.privacy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from fedrl.core.aggregation import clip_to_norm
from fedrl.core.compress import CompressionConfig, compress_with_feedback, decode, decompress, encode
from fedrl.core.frozen import FrozenConfig
from fedrl.core.privacy import PrivacyConfig, add_gaussian_noise, epsilon, rounds_within, sampling_rate
from fedrl.core.secagg import SecAggConfig, SecureSumResult, secure_sum


class PipelineConfig(FrozenConfig):
    """The stages applied to every update; the defaults apply none (the update travels whole)."""

    clip_norm: float | None = Field(
        None, gt=0, description="C: clip every update to this L2 norm first; required by dp"
    )
    compression: CompressionConfig = CompressionConfig()
    dp: PrivacyConfig = PrivacyConfig()
    secure_aggregation: SecAggConfig = SecAggConfig()

    @model_validator(mode="after")
    def _dp_needs_clip(self) -> PipelineConfig:
        """DP noise is calibrated to the clip norm, so it cannot run without one."""
        if self.dp.mode != "none" and self.clip_norm is None:
            raise ValueError(
                f"dp mode {self.dp.mode!r} needs clip_norm (the noise std is noise_multiplier * clip_norm)"
            )
        return self

    @model_validator(mode="after")
    def _secure_aggregation_needs_dense(self) -> PipelineConfig:
        """Masked messages must add up as integers: secure aggregation quantizes the update itself."""
        c = self.compression
        if self.secure_aggregation.enabled and not c.lossless:
            raise ValueError(
                f"secure_aggregation needs compression.sparsify none and bits 32, got {c.sparsify} and "
                f"{c.bits} (it sends its own fixed point; sparse supports and per-client scales do not sum)"
            )
        return self

    @property
    def applies_nothing(self) -> bool:
        """Whether every update reaches the strategy exactly as the client computed it."""
        return (
            self.clip_norm is None
            and self.compression.lossless
            and self.dp.mode == "none"
            and not self.secure_aggregation.enabled
        )

    @property
    def noise_std(self) -> float:
        """The standard deviation ``z * C`` of the DP noise (0 without DP)."""
        return self.dp.noise_multiplier * self.clip_norm if self.dp.mode != "none" else 0.0


@dataclass(frozen=True)
class ClientMessage:
    """What a client puts on the wire, and the error-feedback residual it keeps (None without)."""

    payload: bytes
    residual: np.ndarray | None


def client_message(
    config: PipelineConfig,
    delta: np.ndarray,
    residual: np.ndarray | None,
    rng: np.random.Generator,
    sizes: tuple[int, ...] | None = None,
) -> ClientMessage:
    """The client side of the pipeline for one update (order and reasons in the module docstring);
    ``sizes``: the model's tensor sizes (``ParamSpec.sizes``), for per-tensor top-k."""
    x = delta if config.clip_norm is None else clip_to_norm(delta, config.clip_norm)
    if config.dp.mode == "local":
        x = add_gaussian_noise(x, config.noise_std, rng)
    bound = config.clip_norm if config.dp.mode == "central" else None
    message, residual = compress_with_feedback(x, residual, config.compression, rng, sizes, bound)
    return ClientMessage(encode(message), residual)  # secure aggregation masks the vector these bytes stand for


def decode_update(payload: bytes, dim: int) -> np.ndarray:
    """The float32 ``(dim,)`` update a client's payload stands for; ``ValueError`` saying why when
    it is not an encoded update of that size. Every runtime's server decodes with this."""
    return decompress(decode(payload, dim))


def central_mean(
    config: PipelineConfig, stack: np.ndarray, expected_clients: float, rng: np.random.Generator
) -> np.ndarray:
    """Central DP's server step: ``(sum_i x_i + N(0, (zC)^2 I)) / (qN)``, the noised sum over the
    expected number of clients -- a fixed denominator, so the count of clients that took part
    stays hidden (DP-FedAvg's estimator; McMahan et al. 2018). An empty stack still gets noise."""
    return noised_mean(config, stack.sum(axis=0, dtype=np.float64).astype(np.float32), expected_clients, rng)


def noised_mean(
    config: PipelineConfig, total: np.ndarray, expected_clients: float, rng: np.random.Generator
) -> np.ndarray:
    """``(total + N(0, (zC)^2 I)) / (qN)``: central DP's step on a round's sum of updates ``total`` ``(d,)``."""
    return (add_gaussian_noise(total, config.noise_std, rng) / np.float32(expected_clients)).astype(np.float32)


def secure_mean(
    config: PipelineConfig,
    stack: np.ndarray,
    dropped: np.ndarray,
    expected_clients: float,
    rng: np.random.Generator,
    noise_rng: np.random.Generator,
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, SecureSumResult]:
    """The server side under secure aggregation: the sum of the rows of ``stack`` ``(n, d)`` whose
    masked inputs arrive (``dropped`` ``(n,)`` bool: shared keys, then sent nothing), through
    ``secure_sum``; then central DP's ``noised_mean`` of it, or else its mean over the survivors.
    ``extra`` (uint32 ``(n, m)``) are summed beside (``SecureSumResult.extra``). ``rng`` draws the
    protocol's keys and seeds. Raises ``BelowThreshold`` (no sum exists)."""
    result = secure_sum(stack, dropped, config.secure_aggregation, rng, extra=extra)
    return mean_of_secure_sum(config, result.sum, result.n_survivors, expected_clients, noise_rng), result


def mean_of_secure_sum(
    config: PipelineConfig, total: np.ndarray, n_survivors: int, expected_clients: float, noise_rng: np.random.Generator
) -> np.ndarray:
    """What the strategy receives from a secure sum ``total`` (float32, dequantized) of
    ``n_survivors`` inputs: central DP's ``noised_mean``, or else the mean over the survivors."""
    if config.dp.mode == "central":
        return noised_mean(config, total, expected_clients, noise_rng)
    return (total / np.float32(n_survivors)).astype(np.float32)


@dataclass(frozen=True)
class PipelineState:
    """What the pipeline keeps on each of N clients (``fedrl.core.rows``); a field is None when
    the experiment's pipeline does not need it."""

    residual: np.ndarray | None = None  # (N, d) float32: error feedback's residual, with error_feedback
    participation: np.ndarray | None = None  # (N,) int64: rounds taken part in, with local DP

    @property
    def most_participation(self) -> int:
        """The rounds taken part in by the client that took part most (0 without local DP)."""
        return 0 if self.participation is None else int(self.participation.max(initial=0))


def init_pipeline_state(config: PipelineConfig, n_clients: int, dim: int) -> PipelineState:
    """The state of ``n_clients`` clients that have sent nothing yet."""
    return PipelineState(
        np.zeros((n_clients, dim), dtype=np.float32) if config.compression.error_feedback else None,
        np.zeros(n_clients, dtype=np.int64) if config.dp.mode == "local" else None,
    )


def after_sending(state: PipelineState, clients: np.ndarray, messages: list[ClientMessage]) -> PipelineState:
    """The pipeline's client state after ``clients`` sent ``messages`` (in the same order); ``state`` is unchanged."""
    residual, participation = state.residual, state.participation
    if residual is not None and len(clients):
        residual = residual.copy()
        residual[clients] = np.stack([m.residual for m in messages])
    if participation is not None:
        participation = participation.copy()
        participation[clients] += 1
    return PipelineState(residual, participation)


def spent_epsilon(config: PipelineConfig, fraction: float, rounds: int, most_participation: int = 0) -> float:
    """The epsilon (at ``config.dp.delta``) spent after ``rounds`` rounds: central mode, one
    Poisson-sampled Gaussian mechanism per round; local mode, one full Gaussian mechanism per round
    taken part in, for the client that took part most (``most_participation`` rounds). Infinite
    without DP."""
    dp = config.dp
    if dp.mode == "none":
        return math.inf
    releases = rounds if dp.mode == "central" else most_participation
    return epsilon(dp.noise_multiplier, sampling_rate(dp, fraction), releases, dp.delta)


def budget_problem(config: PipelineConfig, fraction: float, rounds: int) -> str | None:
    """Why ``rounds`` rounds could spend more than ``dp.target_epsilon`` (in local mode, counting a
    client that takes part in every round), or None when they fit or there is no target."""
    dp = config.dp
    if dp.target_epsilon is None:
        return None
    rate = sampling_rate(dp, fraction)
    worst = epsilon(dp.noise_multiplier, rate, rounds, dp.delta)
    if worst <= dp.target_epsilon:
        return None
    most = rounds_within(dp.target_epsilon, dp.noise_multiplier, rate, dp.delta)
    return (
        f"{rounds} rounds at noise_multiplier {dp.noise_multiplier:g} and sampling rate {rate:g} spend "
        f"epsilon {worst:.3g} at delta {dp.delta:g}; at most {most} rounds fit (federation.rounds)"
    )
