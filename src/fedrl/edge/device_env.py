"""The environment a device acts in, named on the device and never by the server.

``--env`` takes one of:

- ``package.module:function`` (or ``:Class``): a factory that returns a Gymnasium environment
  wrapping the device's sensors and actuators, called with ``--env-kwargs``; its module is looked
  up in ``--env-dir`` first when given, else on the Python path, then in the working directory;
- a registered Gymnasium id (``CartPole-v1``, ``fedrl/Pendulum-v0``), made with the kwargs;
- a built-in family name (``cartpole``): the simulated environment of client ``--client-index``
  of the server's experiment, for demos and tests.

Before acting, the device checks that its environment has the spaces the experiment trains
(``fedrl.envs.spaces.mismatch``), and says which side has what when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from fedrl.edge.device import load_callable
from fedrl.envs import FAMILIES
from fedrl.envs.gym_registration import GYM_IDS
from fedrl.envs.spaces import mismatch
from fedrl.experiment.setup import Setup


class EnvUnusable(ValueError):
    """The device's environment cannot be made, or cannot run the experiment's policy."""


@dataclass(frozen=True)
class DeviceEnvSpec:
    """What ``--env``, ``--env-kwargs`` and ``--env-dir`` name."""

    entry: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    search_dir: Path | None = None

    @property
    def is_family(self) -> bool:
        """Whether ``entry`` names a simulated built-in family."""
        return self.entry in FAMILIES


def make_env(spec: DeviceEnvSpec, setup: Setup, client_index: int) -> gym.Env:
    """The device's environment, checked against the experiment ``setup`` trains."""
    family = setup.family
    if spec.is_family:
        if spec.entry != family.name:
            raise EnvUnusable(f"this device runs env {spec.entry!r} but the server's experiment trains {family.name!r}")
        row = setup.env_params[client_index]
        params = {name: float(value) for name, value in zip(family.param_names, row)}
        env = gym.make(GYM_IDS[spec.entry], **params, **spec.kwargs)
    else:
        try:
            if ":" in spec.entry and spec.entry not in gym.registry:
                env = load_callable(spec.entry, spec.search_dir, "--env")(**spec.kwargs)
            else:
                env = gym.make(spec.entry, **spec.kwargs)
        except ValueError as exc:  # load_callable's, naming --env
            raise EnvUnusable(str(exc)) from None
        except Exception as exc:  # a user's constructor may raise anything
            raise EnvUnusable(f"--env {spec.entry}: making it failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(env, gym.Env):
        raise EnvUnusable(f"--env {spec.entry} returned {type(env).__name__}, not a gymnasium.Env")
    problem = mismatch(family, env)
    if problem is not None:
        env.close()
        raise EnvUnusable(f"--env {spec.entry}: {problem}")
    return env
