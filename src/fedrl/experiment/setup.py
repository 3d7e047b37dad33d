"""Everything a run derives from its experiment config, built once and never changed, in every runtime."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import gymnasium
import numpy as np

from fedrl.agents import (
    BatchedNet,
    Budget,
    NetworkFactory,
    UserLearnerConfig,
    federated_mask,
    make_net,
    register_loss,
)
from fedrl.core.robust import CUSTOM_RULE, RobustConfig, register_rule
from fedrl.core.strategies import FedAvgConfig, Strategy, UserStrategyConfig, make_strategy
from fedrl.envs import get_family
from fedrl.envs.base import (
    Continuous,
    Discrete,
    EnvFamily,
    ParamRange,
    heldout_params,
    heldout_within,
    params_from_rows,
    sample_params,
)
from fedrl.envs.gym_adapter import ACTION_BOUND, gym_family
from fedrl.envs.spaces import spaces_family
from fedrl.experiment.config import (
    DEVICE_FAMILY,
    ConfigError,
    DeviceSpacesConfig,
    ExperimentConfig,
    GymEnvConfig,
    import_function,
    import_setter,
)
from fedrl.experiment.streams import INIT_STREAM
from fedrl.experiment.usercode import load_loss, load_strategy


def _no_params(env, row: dict[str, float]) -> None:
    """The setter of an adapter family without per-client parameters."""


def build_gym_family(gym: GymEnvConfig) -> EnvFamily:
    """The adapter family an ``env.gym`` section describes, importing its setter's module (first:
    it may register the id); ``ConfigError`` naming the key when the setter cannot be loaded, the
    id is not registered or cannot be made (a missing dependency), or has spaces the adapter does
    not support."""
    try:
        setter = import_setter(gym.setter, gym.setter_dir) if gym.setter else _no_params
    except ValueError as exc:
        raise ConfigError(f"bad config: env.gym.setter = {gym.setter!r}: {exc}") from None
    try:
        gymnasium.spec(gym.id)
    except Exception as exc:  # gymnasium.error.NameNotFound, VersionNotFound, ...
        raise ConfigError(f"bad config: env.gym.id = {gym.id!r}: not a registered Gymnasium id: {exc}") from None
    ranges = [ParamRange(name, p.standard, p.low, p.high, p.doc) for name, p in gym.params.items()]
    try:
        return gym_family(gym.id, ranges, setter, gym.time_limit, gym.solved_return)
    except Exception as exc:  # ValueError for spaces; gymnasium.error.DependencyNotInstalled, ...
        reason = " ".join(str(exc).split())
        raise ConfigError(f"bad config: env.gym.id = {gym.id!r}: {type(exc).__name__}: {reason}") from None


def device_family(spaces: DeviceSpacesConfig) -> EnvFamily:
    """The family of a fleet whose devices bring their own environments (``family: device``)."""
    if spaces.discrete is not None:
        action: Discrete | Continuous = Discrete(spaces.discrete)
    else:
        action = Continuous(spaces.continuous, ACTION_BOUND)
    return spaces_family(
        DEVICE_FAMILY, spaces.obs_dim, action, spaces.action_bound, spaces.time_limit, spaces.solved_return
    )


def spaces_config(family: EnvFamily) -> DeviceSpacesConfig:
    """``family``'s spaces as a ``family: device`` section (a continuous bound: its standard value)."""
    space = family.action_space
    if isinstance(space, Discrete):
        return DeviceSpacesConfig(
            obs_dim=family.obs_dim, discrete=space.n, time_limit=family.time_limit, solved_return=family.solved_return
        )
    bound = float(family.standard_params[family.param_names.index(space.bound_param)])
    return DeviceSpacesConfig(
        obs_dim=family.obs_dim,
        continuous=space.dim,
        action_bound=bound,
        time_limit=family.time_limit,
        solved_return=family.solved_return,
    )


@dataclass(frozen=True)
class Setup:
    """The immutable pieces of a run: family, client physics, network, strategy, budget, random streams."""

    config: ExperimentConfig

    @cached_property
    def family(self) -> EnvFamily:
        """The clients' environment family: a built-in one, a Gymnasium id through the adapter, or
        the spaces of the devices' own environments."""
        env = self.config.env
        if env.device is not None:
            return device_family(env.device)
        return get_family(env.family) if env.gym is None else build_gym_family(env.gym)

    @property
    def simulated(self) -> bool:
        """Whether this machine can step the clients' environments (not for ``family: device``)."""
        return self.config.env.device is None

    def for_devices(self, keep_rule: bool = False) -> ExperimentConfig:
        """The experiment as the devices receive it: a Gymnasium section (an id and a setter a
        device would have to import) becomes the spaces it has, ``family: device``, and a robust
        rule of the user's (which only the server runs) becomes ``mean``; each device runs its own
        environment, never code the server names. A strategy of the user's runs on the server only, so
        devices are told FedAvg (the client side of both is the same plain local training). A network
        of the user's and a learner loss of the user's are every device's too: each imports them by name
        from its own working directory or Python path, and only when its operator allows it.

        ``keep_rule``: what a regional aggregator receives, which runs the robust rule over its
        devices' updates: a rule of the user's is kept by name (its folder is the server's, so
        ``rule_dir`` is not), for the region to import when its operator allows it."""
        config = self.config
        learner = config.learner.model_copy(update={"network_dir": None})
        if isinstance(learner, UserLearnerConfig):
            learner = learner.model_copy(update={"learner_dir": None})
        config = config.model_copy(update={"learner": learner})
        strategy = config.strategy
        if isinstance(strategy, UserStrategyConfig):
            strategy = FedAvgConfig(robust=strategy.robust)
        if CUSTOM_RULE.fullmatch(strategy.robust.rule):
            rule = strategy.robust.rule if keep_rule else "mean"
            strategy = strategy.model_copy(
                update={"robust": strategy.robust.model_copy(update={"rule": rule, "rule_dir": None})}
            )
        config = config.model_copy(update={"strategy": strategy})
        if config.env.gym is None:
            return config
        env = config.env.model_copy(
            update={"family": DEVICE_FAMILY, "gym": None, "device": spaces_config(self.family), "clients": None}
        )
        return config.model_copy(update={"env": env})

    @property
    def statistics_layout(self) -> tuple[int | None, bool]:
        """What a client's normalisation statistics hold: observation statistics of ``obs_dim`` values
        (None when observations are not normalised), and whether returns' are there."""
        normalize = self.config.learner.normalize
        return (self.family.obs_dim if normalize.obs else None), bool(normalize.reward)

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
        """Physical parameters of (up to) ``n_clients`` clients never trained on: the first of
        ``env.heldout`` when listed; drawn within the range of ``env.clients`` when those are listed
        (never from ranges the config did not give); else from the family's ranges."""
        env = self.config.env
        if env.heldout is not None:
            try:
                return params_from_rows(self.family, env.heldout)[:n_clients]
            except ValueError as exc:
                raise ConfigError(f"bad config: env.heldout: {exc}") from None
        if env.clients is not None:
            return heldout_within(self.env_params, n_clients, self.config.seed)
        return heldout_params(self.family, n_clients, env.heterogeneity, self.config.seed)

    @cached_property
    def network(self) -> NetworkFactory | None:
        """The factory of the user's own network (``learner.network``, imported), or None for fedrl's MLP."""
        learner = self.config.learner
        if not learner.network:
            return None
        try:
            return import_function(learner.network, learner.network_dir, "network")
        except ValueError as exc:
            raise ConfigError(f"bad config: learner.network = {learner.network!r}: {exc}") from None

    @cached_property
    def net(self) -> BatchedNet:
        """The network every client trains (actor-critic, or a Q-network for DQN): fedrl's MLP, or
        the modules of the user's ``learner.network``; a learner loss of the user's is imported and
        registered here too."""
        learner = self.config.learner
        if isinstance(learner, UserLearnerConfig):  # registered first: every runtime builds the net before training
            register_loss(learner.name, load_loss(learner))
        key, value = ("learner.network", learner.network) if learner.network else ("learner.name", learner.name)
        try:
            return make_net(learner, self.family, self.network)
        except ValueError as exc:
            raise ConfigError(f"bad config: {key} = {value!r}: {exc}") from None

    @cached_property
    def federated(self) -> np.ndarray:
        """``(d,)`` bool: the coordinates clients send; the rest stay personal."""
        return federated_mask(self.config.learner, self.net)

    @cached_property
    def strategy(self) -> Strategy:
        """The server strategy (its robust rule imported first when it is one of the user's; a
        strategy of the user's imported and made, ``fedrl.experiment.usercode``)."""
        config = self.config.strategy
        robust = config.robust
        rule = robust.rule
        if CUSTOM_RULE.fullmatch(rule):
            try:
                register_rule(rule, import_function(rule, robust.rule_dir, "robust rule"))
            except ValueError as exc:
                raise ConfigError(f"bad config: strategy.robust.rule = {rule!r}: {exc}") from None
        if isinstance(config, UserStrategyConfig):
            return make_strategy(config, load_strategy(config))
        return make_strategy(config)

    @cached_property
    def root_strategy(self) -> Strategy:
        """The strategy as the root of a hierarchy runs it (``federation.regions``): the same server
        optimiser over the regions' updates, reduced by their weighted mean, each region having applied the
        robust rule and its norm bound to its own clients' updates; without regions, ``strategy``."""
        if self.config.federation.regions == 1:
            return self.strategy
        config = self.config.strategy.model_copy(update={"robust": RobustConfig()})
        if isinstance(config, UserStrategyConfig):
            return make_strategy(config, load_strategy(config))
        return make_strategy(config)

    @property
    def budget(self) -> Budget:
        """Local training per client per round."""
        fed = self.config.federation
        return Budget(steps=fed.local_steps, episodes=fed.local_episodes)

    @property
    def target_return(self) -> float | None:
        """The global mean return at which a run counts as solved; None when nothing sets one."""
        target = self.config.federation.target_return
        return self.family.solved_return if target is None else target

    def initial_params(self) -> np.ndarray:
        """The round-0 global policy."""
        return self.net.initial_params(seed=int(self.rng(INIT_STREAM).integers(2**31)))

    def rng(self, *tags: int) -> np.random.Generator:
        """The random generator for one purpose, e.g. ``rng(TRAIN_STREAM, round, shard)``."""
        return np.random.default_rng([self.config.seed, *tags])
