"""Observation normalisation and reward scaling, with statistics federated by counts.

Observations are normalised by running statistics, ``clip((obs - mean) / sqrt(var + eps))``, and
rewards are divided by the running standard deviation of the discounted return and clipped, as
Stable-Baselines3's ``VecNormalize`` and Gymnasium's ``NormalizeObservation`` /
``NormalizeReward`` do (Engstrom et al., "Implementation Matters in Deep Policy Gradients", ICLR
2020, measured how much PPO owes to both).

Federated: every client of a round starts from the fleet's statistics, adds what it observes while
it trains (so it normalises with the fleet's statistics and its own new data) and sends the
statistics of its new data beside its update; the server merges them by counts
(``fedrl.core.moments``), so the fleet's statistics are those of every observation any client made.
They are not part of the parameter vector: a server optimiser's momentum, a robust rule or
compression never touches them. With ``stats: personal`` each client keeps its own statistics
instead (FedBN's idea, Li et al., ICLR 2021, applied to the input scaling) and, in the simulator,
sends none (a deployed device sends them for the server to pool, unless DP or secure aggregation
keeps them on the device); held-out clients and saved policies use every client's pooled by counts.
The saved policy carries the observation statistics in its card (``PolicyCard.obs_norm``), so a
loaded or exported policy normalises exactly as evaluation did; reward scaling only shapes training
and is not carried.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from pydantic import Field

from fedrl.core.frozen import FrozenConfig
from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats

EPS = 1e-8


class NormalizeConfig(FrozenConfig):
    """What a learner normalises (``learner.normalize``); both off by default."""

    obs: bool = Field(False, description="normalise observations by the fleet's running mean and variance")
    reward: bool = Field(False, description="divide rewards by the running standard deviation of the discounted return")
    clip_obs: float = Field(10.0, gt=0, description="normalised observations are clipped to [-clip_obs, clip_obs]")
    clip_reward: float = Field(10.0, gt=0, description="scaled rewards are clipped to [-clip_reward, clip_reward]")
    stats: Literal["fleet", "personal"] = Field(
        "fleet",
        description="fleet: one set of statistics, every client's observations merged by counts at the end of a "
        "round; personal: each client keeps its own (a new client starts from all of them pooled); simulated clients "
        "send none, deployed devices send them for the server to pool unless DP or secure aggregation is on",
    )

    @property
    def active(self) -> bool:
        """Whether anything is normalised (and statistics are kept)."""
        return self.obs or self.reward


def init_stats(config: NormalizeConfig, obs_dim: int, n_clients: int = 1) -> NormStats | None:
    """The statistics before anything is observed: the fleet's, or with ``stats: personal`` one row
    for each of ``n_clients``; None when ``config`` normalises nothing."""
    if not config.active:
        return None
    batch = (n_clients,) if config.stats == "personal" else ()
    return NormStats(
        Moments.empty(batch, obs_dim) if config.obs else None, Moments.empty(batch, 1) if config.reward else None
    )


class ObsScale(NamedTuple):
    """Fixed observation normalisation, float32 as a saved policy applies it:
    ``clip((obs - mean) / std, -clip, clip)`` with ``std = sqrt(var + eps)``."""

    mean: np.ndarray  # (obs_dim,), or (C, 1, obs_dim) per client
    std: np.ndarray
    clip: np.float32

    @classmethod
    def of(cls, moments: Moments, clip: float) -> ObsScale:
        """The scale of ``moments``, rounded to float32 first as a policy card stores it."""
        var = moments.var.astype(np.float32)
        return cls(moments.mean.astype(np.float32), np.sqrt(var + np.float32(EPS), dtype=np.float32), np.float32(clip))

    def apply(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` normalised, float32."""
        return np.clip((np.asarray(obs, dtype=np.float32) - self.mean) / self.std, -self.clip, self.clip)


def obs_scale(config: NormalizeConfig, stats: NormStats | None) -> ObsScale | None:
    """How a policy trained under ``config`` with the fleet's ``stats`` (or one row of statistics per
    client) normalises what it observes."""
    if stats is None or stats.obs is None:
        return None
    scale = ObsScale.of(stats.obs, config.clip_obs)
    if scale.mean.ndim == 2:  # one row per client: broadcast over each client's episodes
        return ObsScale(scale.mean[:, None], scale.std[:, None], scale.clip)
    return scale


class Normalizer:
    """One client batch's normalisation while it trains: starts from the fleet's statistics, adds
    what each client observes, and keeps each environment's running discounted return."""

    def __init__(self, config: NormalizeConfig, start: NormStats, returns: np.ndarray | None, gamma: float):
        """``start`` holds one row per client; ``returns`` ``(C, E)`` the running discounted returns
        of the clients' ongoing episodes (reward scaling only)."""
        self.config, self.gamma = config, gamma
        self.start = start
        n = len((start.obs or start.returns).count)
        self.seen = NormStats(
            None if start.obs is None else Moments.empty((n,), start.obs.mean.shape[-1]),
            None if start.returns is None else Moments.empty((n,), 1),
        )
        self.returns = None if returns is None else np.array(returns, dtype=np.float64)

    def observe(self, obs: np.ndarray) -> np.ndarray:
        """Add ``obs`` ``(C, E, obs_dim)`` to each client's statistics and return it normalised."""
        if self.seen.obs is None:
            return obs
        self.seen = NormStats(self.seen.obs.merge(Moments.of(obs)), self.seen.returns)
        return self.scale(obs)

    def scale(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` ``(C, N, obs_dim)`` normalised by each client's current statistics (nothing added)."""
        if self.seen.obs is None:
            return obs
        now = ObsScale.of(self.start.obs.merge(self.seen.obs), self.config.clip_obs)
        return ObsScale(now.mean[:, None], now.std[:, None], now.clip).apply(obs)

    def reward(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """Scale ``reward`` ``(C, E)``, adding each environment's discounted return to the statistics;
        ``done`` ``(C, E)`` ends episodes (their running return restarts)."""
        if self.seen.returns is None:
            return reward
        self.returns = self.returns * self.gamma + reward
        self.seen = NormStats(self.seen.obs, self.seen.returns.merge(Moments.of(self.returns[..., None])))
        scaled = self.scale_reward(reward)
        self.returns[done] = 0.0
        return scaled

    def scale_reward(self, reward: np.ndarray) -> np.ndarray:
        """``reward`` ``(C, N)`` divided by each client's current return deviation, clipped (nothing added)."""
        if self.seen.returns is None:
            return reward
        var = self.start.returns.merge(self.seen.returns).var  # (C, 1)
        clip = self.config.clip_reward
        return np.clip(reward / np.sqrt(var + EPS), -clip, clip).astype(np.float32)

    def restart(self) -> None:
        """Every environment starts a fresh episode (REINFORCE resets each rollout)."""
        if self.returns is not None:
            self.returns[:] = 0.0


def make_normalizer(
    config: NormalizeConfig, stats: NormStats | None, n_clients: int, returns: np.ndarray | None, gamma: float
) -> Normalizer | None:
    """The normaliser of a client batch starting from the fleet's ``stats`` (or each client's own
    row); None when nothing is normalised."""
    if stats is None:
        return None
    return Normalizer(config, stats if stats.personal else stats.broadcast(n_clients), returns, gamma)
