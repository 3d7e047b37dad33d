"""Everything a run derives from its experiment config, built once and never changed, in every runtime."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fedrl.agents import Budget, PolicyNet, federated_mask, init_params, make_net
from fedrl.core.strategies import Strategy, make_strategy
from fedrl.envs import get_family
from fedrl.envs.base import EnvFamily, ParamRange, heldout_params, params_from_rows, sample_params
from fedrl.envs.gym_adapter import gym_family
from fedrl.experiment.config import ConfigError, ExperimentConfig, GymEnvConfig, import_setter
from fedrl.experiment.streams import INIT_STREAM


def _no_params(env, row: dict[str, float]) -> None:
    """The setter of an adapter family without per-client parameters."""


def build_gym_family(gym: GymEnvConfig) -> EnvFamily:
    """The adapter family an ``env.gym`` section describes; ``ConfigError`` if the id cannot
    be made (a missing dependency) or has spaces the adapter does not support."""
    try:
        setter = import_setter(gym.setter, gym.setter_dir) if gym.setter else _no_params
    except ValueError as exc:  # validated with the config, but the module may have gone since
        raise ConfigError(f"bad config: env.gym.setter = {gym.setter!r}: {exc}") from None
    ranges = [ParamRange(name, p.standard, p.low, p.high, p.doc) for name, p in gym.params.items()]
    try:
        return gym_family(gym.id, ranges, setter, gym.time_limit, gym.solved_return)
    except Exception as exc:  # ValueError for spaces; gymnasium.error.DependencyNotInstalled, ...
        reason = " ".join(str(exc).split())
        raise ConfigError(f"bad config: env.gym.id = {gym.id!r}: {type(exc).__name__}: {reason}") from None


@dataclass(frozen=True)
class Setup:
    """The immutable pieces of a run: family, client physics, network, strategy, budget, random streams."""

    config: ExperimentConfig

    @cached_property
    def family(self) -> EnvFamily:
        """The clients' environment family: a built-in one, or a Gymnasium id through the adapter."""
        gym = self.config.env.gym
        return get_family(self.config.env.family) if gym is None else build_gym_family(gym)

    @property
    def env_state_is_value(self) -> bool:
        """Whether the env state is plain arrays that a checkpoint can hold. The adapter's
        Gymnasium environments step in place and cannot be saved (``fedrl.envs.gym_adapter``)."""
        return self.config.env.gym is None

    @cached_property
    def env_params(self) -> np.ndarray:
        """Physical parameters of every client, ``(n_clients, P)``."""
        env, fed = self.config.env, self.config.federation
        if env.clients is not None:
            try:
                return params_from_rows(self.family, env.clients)
            except ValueError as exc:
                raise ConfigError(f"bad config: env.clients: {exc}") from None
        return sample_params(self.family, fed.n_clients, env.heterogeneity, self.config.seed)

    def heldout_params(self, n_clients: int) -> np.ndarray:
        """Physical parameters of ``n_clients`` clients never trained on."""
        return heldout_params(self.family, n_clients, self.config.env.heterogeneity, self.config.seed)

    @cached_property
    def net(self) -> PolicyNet:
        """The network every client trains (actor-critic, or a Q-network for DQN)."""
        try:
            return make_net(self.config.learner, self.family)
        except ValueError as exc:
            raise ConfigError(f"bad config: learner.name = {self.config.learner.name!r}: {exc}") from None

    @cached_property
    def federated(self) -> np.ndarray:
        """``(d,)`` bool: the coordinates clients send; the rest stay personal."""
        return federated_mask(self.config.learner, self.net)

    @cached_property
    def strategy(self) -> Strategy:
        """The server strategy."""
        return make_strategy(self.config.strategy)

    @property
    def budget(self) -> Budget:
        """Local training per client per round."""
        fed = self.config.federation
        return Budget(steps=fed.local_steps, episodes=fed.local_episodes)

    @property
    def target_return(self) -> float:
        """The global mean return at which a run counts as solved."""
        target = self.config.federation.target_return
        return self.family.solved_return if target is None else target

    def initial_params(self) -> np.ndarray:
        """The round-0 global policy."""
        return init_params(self.net.shape, seed=int(self.rng(INIT_STREAM).integers(2**31)))

    def rng(self, *tags: int) -> np.random.Generator:
        """The random generator for one purpose, e.g. ``rng(TRAIN_STREAM, round, shard)``."""
        return np.random.default_rng([self.config.seed, *tags])
