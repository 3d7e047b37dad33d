"""Parameter setters for running Gymnasium ids through fedrl's adapter (``env.family: gym``).

A setter is ``function(env, row)``: ``env`` is the *unwrapped* Gymnasium environment, freshly
made, and ``row`` maps each parameter named in the config's ``env.gym.params`` to this client's
value. It must leave the environment consistent: Gymnasium's CartPole computes ``total_mass``
and ``polemass_length`` once, in ``__init__``, so a setter that changes a mass or the length
recomputes them. A config names a setter as ``"gym_setters:set_cartpole"``; the module is
imported from the config file's folder (``env.gym.setter_dir``), then the working directory.
"""

from __future__ import annotations

import gymnasium as gym


def set_cartpole(env: gym.Env, row: dict[str, float]) -> None:
    """CartPole-v1: pole half-length ``length``, ``masspole`` and ``masscart``; a parameter the
    config does not list keeps Gymnasium's value."""
    env.length = row.get("length", env.length)
    env.masspole = row.get("masspole", env.masspole)
    env.masscart = row.get("masscart", env.masscart)
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length
