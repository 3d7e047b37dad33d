"""Deep Q-learning for a client batch, with double-DQN targets.

Mnih et al., "Human-level control through deep reinforcement learning", Nature 2015 (replay,
target network, Huber loss, epsilon-greedy), and van Hasselt et al., "Deep Reinforcement
Learning with Double Q-learning", AAAI 2016 (the online network picks the next action, the
target network values it). Discrete actions only. The Q-network is the actor tower of
``PolicyNet`` (a shape without critic, see ``fedrl.agents.make_net``), its outputs read as action
values, so greedy evaluation (argmax) is the same as for a policy.

What each client keeps between rounds (``client_state``, never sent): its replay buffer -- a
ring over ``buffer_size`` transitions per client, with its write index and fill size -- and its
total env steps, which drive the epsilon schedule and ``learning_starts`` across rounds.
Environments keep their episodes across rounds, as in PPO. A time-out is not terminal: its
transition bootstraps from the observation it reached.

Normalisation (``learner.normalize``). The buffer keeps raw observations and rewards; a
minibatch is normalised with the client's statistics when it is sampled, as Stable-Baselines3
does with ``VecNormalize``, so old transitions are read on today's scale.

Target network. It is set to the parameters a client starts the round from -- the new global
Q-network -- and refreshed from the online network every ``target_update_every`` gradient steps
within the round. So it is not kept between rounds: after aggregation the global network is
both newer and better informed than any client's old target, and a target from before the
aggregation would pull each client back toward its own pre-round weights.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field, model_validator

from fedrl.agents import client
from fedrl.agents.config import LearnerBase
from fedrl.agents.local import Budget, LocalResult, LocalTask
from fedrl.agents.memory import DQNMemory, ReplayArrays, empty_replay
from fedrl.agents.nets import BatchedNet
from fedrl.agents.normalize import Normalizer
from fedrl.agents.optim import make_optimizer
from fedrl.envs.base import Discrete, step


class DQNConfig(LearnerBase):
    """DQN hyper-parameters; counts of env steps are per client (all its environments together)."""

    name: Literal["dqn"] = "dqn"
    n_envs: int = Field(4, ge=1, description="parallel environments per client")
    max_grad_norm: float = Field(10.0, ge=0, description="per-client gradient norm clip (0 = off)")
    buffer_size: int = Field(10_000, ge=1, description="replay capacity in transitions, per client")
    batch_size: int = Field(64, ge=1, description="transitions per client per gradient step")
    learning_starts: int = Field(1_000, ge=0, description="a client's env steps before its first gradient step")
    train_freq: int = Field(1, ge=1, description="vector steps (n_envs env steps each) between training phases")
    gradient_steps: int = Field(1, ge=1, description="gradient steps per training phase")
    target_update_every: int = Field(
        500,
        ge=1,
        description="gradient steps between target network refreshes (500: federated CartPole with normalisation "
        "solved 5 of 5 seeds where 250 solved 4, though without normalisation 0 where 250 solved 1; "
        "docs/benchmarks.md, 'Local learners')",
    )
    exploration_steps: int = Field(10_000, ge=1, description="a client's env steps over which epsilon decays")
    eps_start: float = Field(1.0, ge=0, le=1, description="epsilon at a client's first env step")
    eps_end: float = Field(0.05, ge=0, le=1, description="epsilon after exploration_steps")
    double: bool = Field(True, description="double-DQN targets (van Hasselt et al., 2016)")

    @model_validator(mode="after")
    def _buffer_holds_a_step(self) -> DQNConfig:
        if self.buffer_size < self.n_envs:
            raise ValueError(
                f"buffer_size ({self.buffer_size}) must hold one step of n_envs ({self.n_envs}) transitions"
            )
        return self


class Transitions(NamedTuple):
    """A minibatch of ``B`` transitions per client, ``(C, B, ...)``."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


def check_discrete(family_or_space) -> None:
    """``ValueError`` unless the actions are discrete."""
    space = getattr(family_or_space, "action_space", family_or_space)
    if not isinstance(space, Discrete):
        raise ValueError(f"dqn needs discrete actions; this environment's action space is {space}")


def init_state(config: DQNConfig, net: BatchedNet, n_clients: int) -> DQNMemory:
    """A fresh client state: an empty replay buffer and no env steps taken."""
    check_discrete(net.shape.action_space)
    return DQNMemory(empty_replay(n_clients, config.buffer_size, net.shape.obs_dim), np.zeros(n_clients, np.int64))


def to_torch(arrays: ReplayArrays) -> ReplayArrays:
    """The buffer as torch tensors, copies of ``arrays`` (the caller's arrays are never written)."""
    return ReplayArrays(*(torch.from_numpy(np.array(getattr(arrays, f.name))) for f in fields(ReplayArrays)))


def to_numpy(buffer: ReplayArrays) -> ReplayArrays:
    """The buffer as the numpy arrays a client keeps (sharing the tensors' memory)."""
    return ReplayArrays(*(getattr(buffer, f.name).numpy() for f in fields(ReplayArrays)))


def store(buffer: ReplayArrays, obs, action, reward, next_obs, terminated) -> ReplayArrays:
    """Write one vector step, ``(C, E, ...)`` per field, at each client's own write index
    (wrapping around); writes into ``buffer``'s arrays and returns its new index and size."""
    c, e = action.shape
    capacity = buffer.action.shape[1]
    rows = torch.arange(c)[:, None]
    slots = (buffer.index[:, None] + torch.arange(e)) % capacity
    for name, value in zip(Transitions._fields, (obs, action, reward, next_obs, terminated)):
        getattr(buffer, name)[rows, slots] = value
    index = (buffer.index + e) % capacity
    return replace(buffer, index=index, size=torch.clamp(buffer.size + e, max=capacity))


def sample(buffer: ReplayArrays, batch_size: int, gen: torch.Generator) -> Transitions:
    """``batch_size`` transitions per client, uniformly with replacement from its filled slots."""
    c = buffer.size.shape[0]
    idx = (torch.rand(c, batch_size, generator=gen) * buffer.size[:, None]).long()
    rows = torch.arange(c)[:, None]
    return Transitions(*(getattr(buffer, f)[rows, idx] for f in Transitions._fields))


def epsilon(config: DQNConfig, env_steps: np.ndarray) -> np.ndarray:
    """Linear schedule ``(C,)`` from ``eps_start`` to ``eps_end`` over ``exploration_steps``."""
    progress = np.minimum(env_steps / config.exploration_steps, 1.0)
    return config.eps_start + progress * (config.eps_end - config.eps_start)


@torch.inference_mode()
def act(net: BatchedNet, flat: torch.Tensor, obs: np.ndarray, eps: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """Epsilon-greedy actions ``(C, E)``: each client explores with its own probability."""
    q = net.actor(net.unpack(flat), torch.from_numpy(obs))
    explore = torch.rand(q.shape[:2], generator=gen) < torch.from_numpy(eps).float()[:, None]
    random = torch.randint(q.shape[-1], q.shape[:2], generator=gen)
    return torch.where(explore, random, q.argmax(-1))


def td_loss(
    net: BatchedNet, config: DQNConfig, flat: torch.Tensor, target: dict[str, torch.Tensor], batch: Transitions
) -> torch.Tensor:
    """Per-client Huber loss ``(C,)`` between ``Q(s, a)`` and ``r + gamma (1 - term) Q_target(s', a')``,
    ``a'`` the online argmax (double DQN) or the target's own."""
    w = net.unpack(flat)
    q = net.actor(w, batch.obs).gather(-1, batch.action.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        q_next = net.actor(target, batch.next_obs)
        chooser = net.actor(w, batch.next_obs) if config.double else q_next
        best = q_next.gather(-1, chooser.argmax(-1, keepdim=True)).squeeze(-1)
        y = batch.reward + config.gamma * (1.0 - batch.terminated) * best
    return torch.nn.functional.smooth_l1_loss(q, y, reduction="none").mean(1)


class Round(NamedTuple):
    """What a round of DQN carries from step to step."""

    buffer: ReplayArrays  # of torch tensors
    target: dict[str, torch.Tensor]
    grad_steps: int  # gradient steps taken this round (all clients together)
    opt_steps: np.ndarray  # (C,) gradient steps each client took
    loss_sum: np.ndarray  # (C,) float64


def normalized(batch: Transitions, norm: Normalizer | None) -> Transitions:
    """``batch`` on the normaliser's current scale: observations normalised, rewards scaled."""
    if norm is None:
        return batch
    return batch._replace(
        obs=torch.from_numpy(norm.scale(batch.obs.numpy())),
        next_obs=torch.from_numpy(norm.scale(batch.next_obs.numpy())),
        reward=torch.from_numpy(norm.scale_reward(batch.reward.numpy())),
    )


def train_phase(config: DQNConfig, task: LocalTask, start: client.Start, optimizer, env_steps, r: Round) -> Round:
    """``gradient_steps`` steps for the clients past ``learning_starts``; the others are masked out."""
    ready = torch.from_numpy((env_steps >= max(config.learning_starts, 1)) & (r.buffer.size.numpy() > 0))
    if not ready.any():
        return r
    for _ in range(config.gradient_steps):
        batch = normalized(sample(r.buffer, config.batch_size, task.gen), start.norm)
        loss = td_loss(task.net, config, start.flat, r.target, batch) * ready
        start.terms.apply(optimizer, start.flat, loss.sum(), config.max_grad_norm, active=ready)
        grad_steps = r.grad_steps + 1
        target = r.target
        if grad_steps % config.target_update_every == 0:
            target = task.net.unpack(start.flat.detach().clone())
        r = r._replace(
            target=target,
            grad_steps=grad_steps,
            opt_steps=r.opt_steps + ready.numpy(),
            loss_sum=r.loss_sum + loss.detach().numpy(),
        )
    return r


def train(config: DQNConfig, task: LocalTask, budget: Budget) -> LocalResult:
    """Act epsilon-greedily, store, and learn from replay until every client has spent ``budget``."""
    check_discrete(task.family)
    start = client.begin(config, task)
    optimizer = make_optimizer(start.flat, config.lr)
    kept = task.client_state.dqn or init_state(config, task.net, task.n_clients)
    env_steps = np.array(kept.env_steps, dtype=np.int64)
    r = Round(
        to_torch(kept.replay),
        start.reference,
        0,
        np.zeros(task.n_clients, np.int64),
        np.zeros(task.n_clients),
    )
    state = task.env_state
    obs = task.family.observe(task.env_params, state.physics)
    steps = np.zeros(task.n_clients, dtype=np.int64)
    episodes = np.zeros(task.n_clients, dtype=np.int64)
    vector_steps = 0
    while not budget.spent(steps, episodes):
        seen = obs if start.norm is None else start.norm.observe(obs)
        action = act(task.net, start.flat.detach(), seen, epsilon(config, env_steps), task.gen)
        res = step(task.family, task.env_params, state, action.numpy(), task.rng)
        if start.norm is not None:
            start.norm.reward(res.reward, res.terminated | res.truncated)  # the return statistics; raw rewards stored
        buffer = store(
            r.buffer,
            torch.from_numpy(obs),
            action,
            torch.from_numpy(res.reward),
            torch.from_numpy(res.final_obs),
            torch.from_numpy(res.terminated.astype(np.float32)),
        )
        r = r._replace(buffer=buffer)
        state, obs = res.state, res.obs
        steps += config.n_envs
        env_steps += config.n_envs
        episodes += (res.terminated | res.truncated).sum(1)
        vector_steps += 1
        if vector_steps % config.train_freq == 0:
            r = train_phase(config, task, start, optimizer, env_steps, r)
    outcome = client.finish(config, task, start, r.opt_steps, DQNMemory(to_numpy(r.buffer), env_steps))
    took = r.opt_steps > 0
    loss = np.where(took, r.loss_sum / np.maximum(r.opt_steps, 1), np.nan)
    return client.result(outcome, state, steps, episodes, torch.from_numpy(loss))
