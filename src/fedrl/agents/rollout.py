"""Collecting experience for a client batch, and generalised advantage estimation.

One loop drives the batched environments with the batched policy; every learner builds on
it. Episodes cut by the time limit are bootstrapped: the reward of the truncated step gets
``gamma * V(final_obs)`` added, so a time-out is not mistaken for failure (Pardo et al.,
"Time Limits in Reinforcement Learning", ICML 2018).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from fedrl.agents import distributions
from fedrl.agents.nets import BatchedNet
from fedrl.agents.normalize import Normalizer
from fedrl.envs.base import Continuous, EnvFamily, EnvState, step


class Rollout(NamedTuple):
    """``T`` steps of experience for ``C`` clients with ``E`` environments each."""

    obs: torch.Tensor  # (T, C, E, obs_dim)
    actions: torch.Tensor  # (T, C, E) long, or (T, C, E, A) float
    logp: torch.Tensor  # (T, C, E)
    values: torch.Tensor  # (T, C, E)
    rewards: torch.Tensor  # (T, C, E), time-outs bootstrapped
    dones: torch.Tensor  # (T, C, E) float: the episode ended at this step
    last_value: torch.Tensor  # (C, E): value of the state after the last step


def env_action(family: EnvFamily, env_params: np.ndarray, action: torch.Tensor) -> np.ndarray:
    """The action array the environment takes: indices, or reals clipped to each client's bound."""
    a = action.numpy()
    space = family.action_space
    if isinstance(space, Continuous):
        bound = family.column(env_params, space.bound_param)[..., None]
        return np.clip(a, -bound, bound)
    return a


@torch.inference_mode()
def collect(
    net: BatchedNet,
    flat: torch.Tensor,
    family: EnvFamily,
    env_params: np.ndarray,
    state: EnvState,
    n_steps: int,
    gamma: float,
    gen: torch.Generator,
    rng: np.random.Generator,
    until_all_done: bool = False,
    norm: Normalizer | None = None,
) -> tuple[Rollout, EnvState]:
    """Run ``n_steps`` steps (or fewer, once every env has finished an episode when
    ``until_all_done``) from ``state`` with the stochastic policy ``flat`` ``(C, d)``; with a
    normaliser the rollout holds normalised observations and scaled rewards."""
    w = net.unpack(flat)
    obs = family.observe(env_params, state.physics)
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in Rollout._fields[:-1]}
    finished = np.zeros(state.t.shape, dtype=bool)
    for _ in range(n_steps):
        o = torch.from_numpy(obs if norm is None else norm.observe(obs))  # each observation counted once
        heads = net.heads(w, o)
        action = distributions.sample(heads, gen)
        res = step(family, env_params, state, env_action(family, env_params, action), rng)
        done = res.terminated | res.truncated
        reward = torch.from_numpy(res.reward if norm is None else norm.reward(res.reward, done))
        if res.truncated.any():
            final_obs = res.final_obs if norm is None else norm.scale(res.final_obs)
            final_value = net.value(w, torch.from_numpy(final_obs))
            reward = reward + gamma * final_value * torch.from_numpy(res.truncated)
        for key, value in zip(rows, (o, action, distributions.log_prob(heads, action), heads.value, reward)):
            rows[key].append(value)
        rows["dones"].append(torch.from_numpy(done.astype(np.float32)))
        state, obs = res.state, res.obs
        finished |= done
        if until_all_done and finished.all():
            break
    last_value = net.value(w, torch.from_numpy(obs if norm is None else norm.scale(obs)))
    return Rollout(**{k: torch.stack(v) for k, v in rows.items()}, last_value=last_value), state


def gae(rollout: Rollout, gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns ``(T, C, E)`` by GAE (Schulman et al., ICLR 2016)."""
    T = rollout.rewards.shape[0]
    adv = torch.zeros_like(rollout.rewards)
    last = torch.zeros_like(rollout.last_value)
    next_value = rollout.last_value
    for t in reversed(range(T)):
        alive = 1.0 - rollout.dones[t]
        delta = rollout.rewards[t] + gamma * next_value * alive - rollout.values[t]
        last = delta + gamma * gae_lambda * alive * last
        adv[t] = last
        next_value = rollout.values[t]
    return adv, adv + rollout.values


def per_client(x: torch.Tensor) -> torch.Tensor:
    """``(T, C, E, ...)`` -> ``(C, T*E, ...)``, always a copy: rollouts are inference tensors,
    which autograd may not save (with ``C = 1`` a reshape alone would be a view of one)."""
    return x.transpose(0, 1).clone(memory_format=torch.contiguous_format).flatten(1, 2)


def first_episode_mask(dones: torch.Tensor) -> torch.Tensor:
    """``(T, C, E)`` mask of the steps that belong to each env's first episode in the rollout."""
    ended_before = torch.cumsum(dones, dim=0) - dones
    return (ended_before == 0).float()


def returns_to_go(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted Monte-Carlo returns ``(T, C, E)``, restarting at every episode end."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running * (1.0 - dones[t])
        out[t] = running
    return out
