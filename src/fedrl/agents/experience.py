"""Learning from experience a device recorded while acting (the edge agent's act-and-learn loop).

In simulation a learner steps its own batched environments; on a device the environment is the
world, stepped by one acting loop at its own pace, and the learner only sees what that loop
recorded: ``Experience``, consecutive transitions of one environment. ``train_from_experience``
turns them into one round of local training for any registered learner:

- PPO, A2C and a user's loss: the transitions, collected with the policy being improved (the
  acting version), are one rollout (``C = E = 1``): values, log-probabilities and GAE are computed
  at the round's start parameters, then PPO's (or the user loss's) epochs of minibatches, or A2C's
  one gradient step per ``n_steps``;
- REINFORCE: one gradient step on the Monte-Carlo returns of the steps whose episode ended
  within the batch (a return needs the episode's end);
- DQN: the transitions join the replay buffer the client keeps, then one training phase per
  ``train_freq`` new transitions, as in simulation.

A break in the record (the next transition does not start where the last one ended: a restart,
a gap) is treated as a time-out: the value of the state reached is bootstrapped, so no return
runs across it. The strategy's client-side terms (FedProx, SCAFFOLD, personal towers) apply as
in simulation (``fedrl.agents.client``).

Normalisation (``learner.normalize``) goes through the record step by step as a simulated rollout
does: each observation joins the statistics and is normalised by them, each reward adds to the
running discounted return (a break restarts it) and is scaled by its deviation. DQN keeps the raw
transitions in its buffer and normalises its minibatches, as in simulation.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrl.agents import a2c, client, distributions, dqn, ppo, reinforce, user
from fedrl.agents.config import LearnerBase
from fedrl.agents.local import LocalResult, LocalTask
from fedrl.agents.memory import DQNMemory
from fedrl.agents.normalize import Normalizer
from fedrl.agents.optim import make_optimizer
from fedrl.agents.rollout import Rollout, returns_to_go
from fedrl.core.experience import Experience


def _ends(exp: Experience) -> np.ndarray:
    """``(T,)`` bool: the transitions after which the running return restarts (episode ends, breaks)."""
    return exp.terminated | exp.truncated | _breaks(exp)


def _breaks(exp: Experience) -> np.ndarray:
    """``(T,)`` bool: transitions after which the record does not go on from where it ended
    (never the last one, whose successor is unknown)."""
    out = np.zeros(exp.steps, dtype=bool)
    done = exp.terminated | exp.truncated
    out[:-1] = ~done[:-1] & (exp.next_obs[:-1] != exp.obs[1:]).any(-1)
    return out


@torch.inference_mode()
def rollout_of(task: LocalTask, flat: torch.Tensor, exp: Experience, gamma: float) -> Rollout:
    """The transitions as a ``(T, 1, 1)`` rollout, valued by the policy ``flat`` ``(1, d)``;
    time-outs and breaks bootstrap ``gamma * V(next_obs)`` into the reward."""
    w = task.net.unpack(flat)
    obs = torch.from_numpy(np.ascontiguousarray(exp.obs, dtype=np.float32))[None]
    next_obs = torch.from_numpy(np.ascontiguousarray(exp.next_obs, dtype=np.float32))[None]
    action = torch.from_numpy(np.ascontiguousarray(exp.action))[None]
    heads = task.net.heads(w, obs)
    next_value = task.net.value(w, next_obs)[0]
    cut = (exp.truncated & ~exp.terminated) | _breaks(exp)  # a terminal state has no value to bootstrap
    reward = torch.from_numpy(exp.reward.astype(np.float32)) + gamma * next_value * torch.from_numpy(cut)
    done = torch.from_numpy((exp.terminated | cut).astype(np.float32))

    def steps(x: torch.Tensor) -> torch.Tensor:  # (1, T, ...) or (T,) -> (T, 1, 1, ...)
        x = x[0] if x.dim() > 1 and x.shape[0] == 1 else x
        return x.reshape(x.shape[0], 1, 1, *x.shape[1:]).clone()

    last = next_value[-1] * (0.0 if exp.terminated[-1] else 1.0)
    return Rollout(
        obs=steps(obs),
        actions=steps(action),
        logp=steps(distributions.log_prob(heads, action)),
        values=steps(heads.value),
        rewards=steps(reward),
        dones=steps(done),
        last_value=last.reshape(1, 1),
    )


def normalised(exp: Experience, norm: Normalizer | None, ends: np.ndarray | None = None) -> Experience:
    """``exp`` on the normaliser's scale, step by step, adding its observations and returns to the
    normaliser's statistics; ``exp`` itself when nothing is normalised. ``ends`` ``(T,)``: the steps
    after which the running return restarts (default: episode ends and breaks in ``exp``)."""
    if norm is None:
        return exp
    obs, reward, next_obs = np.empty_like(exp.obs), np.empty_like(exp.reward), np.empty_like(exp.next_obs)
    ends = _ends(exp) if ends is None else ends
    for t in range(exp.steps):
        obs[t], reward[t] = _observe(norm, exp, t, ends)
        next_obs[t] = norm.scale(exp.next_obs[None, t : t + 1])[0, 0]
    return exp._replace(obs=obs, reward=reward, next_obs=next_obs)


def _observe(norm: Normalizer, exp: Experience, t: int, ends: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Add step ``t``'s observation and return to ``norm``'s statistics; the step's observation
    normalised and its reward scaled."""
    obs = norm.observe(exp.obs[None, t : t + 1])[0, 0]
    return obs, norm.reward(exp.reward[None, t : t + 1], ends[None, t : t + 1])[0, 0]


def _ppo(config: ppo.PPOConfig, task: LocalTask, start: client.Start, exp: Experience):
    optimizer = make_optimizer(start.flat, config.lr)
    rollout = rollout_of(task, start.flat.detach(), normalised(exp, start.norm), config.gamma)
    loss, n = ppo.improve(task, config, start, optimizer, rollout, task.gen)
    return loss, n, None, exp.steps


def _user(config: user.UserLearnerConfig, task: LocalTask, start: client.Start, exp: Experience):
    optimizer = make_optimizer(start.flat, config.lr)
    rollout = rollout_of(task, start.flat.detach(), normalised(exp, start.norm), config.gamma)
    loss, n = user.improve(task, config, start, optimizer, rollout)
    return loss, n, None, exp.steps


def _a2c(config: a2c.A2CConfig, task: LocalTask, start: client.Start, exp: Experience):
    optimizer = make_optimizer(start.flat, config.lr, config.optimizer)
    losses = []
    exp = normalised(exp, start.norm)
    for first in range(0, exp.steps, config.n_steps):
        part = Experience(*(field[first : first + config.n_steps] for field in exp))
        rollout = rollout_of(task, start.flat.detach(), part, config.gamma)
        loss = a2c.loss(task, config, start.flat, a2c.make_batch(rollout, config), start.reference)
        start.terms.apply(optimizer, start.flat, loss.sum(), config.max_grad_norm)
        losses.append(loss.detach())
    return torch.stack(losses).mean(0), len(losses), None, exp.steps


def _reinforce(config: reinforce.ReinforceConfig, task: LocalTask, start: client.Start, exp: Experience):
    ends = np.flatnonzero(exp.terminated | exp.truncated | _breaks(exp))
    if len(ends) == 0:
        return None, 0, None, 0
    optimizer = make_optimizer(start.flat, config.lr)
    finished = Experience(*(field[: ends[-1] + 1] for field in exp))  # returns need the episode's end
    if not (finished.terminated[-1] or finished.truncated[-1]):  # it ends at a break: bootstrapped like a time-out
        finished = finished._replace(truncated=np.append(finished.truncated[:-1], True))
    rollout = rollout_of(task, start.flat.detach(), normalised(finished, start.norm), config.gamma)
    mask = torch.ones(finished.steps, 1, 1)
    returns = returns_to_go(rollout.rewards, rollout.dones, config.gamma)
    loss = reinforce.policy_loss(task, config, start.flat, rollout, mask, returns, start.reference)
    start.terms.apply(optimizer, start.flat, loss.sum(), config.max_grad_norm)
    return loss.detach(), 1, None, int(ends[-1]) + 1  # the steps whose returns it learned from


def _dqn(config: dqn.DQNConfig, task: LocalTask, start: client.Start, exp: Experience):
    optimizer = make_optimizer(start.flat, config.lr)
    kept = task.client_state.dqn or dqn.init_state(config, task.net, 1)
    r = dqn.Round(dqn.to_torch(kept.replay), start.reference, 0, np.zeros(1, np.int64), np.zeros(1))
    env_steps = np.array(kept.env_steps, dtype=np.int64)
    ends = _ends(exp)
    for t in range(exp.steps):
        if start.norm is not None:  # the statistics only: the buffer keeps raw transitions
            _observe(start.norm, exp, t, ends)
        buffer = dqn.store(
            r.buffer,
            torch.from_numpy(exp.obs[t : t + 1, None].astype(np.float32)),
            torch.from_numpy(exp.action[t : t + 1, None].astype(np.int64)),
            torch.from_numpy(exp.reward[t : t + 1, None].astype(np.float32)),
            torch.from_numpy(exp.next_obs[t : t + 1, None].astype(np.float32)),
            torch.from_numpy(exp.terminated[t : t + 1, None].astype(np.float32)),
        )
        r = r._replace(buffer=buffer)
        env_steps += 1
        if (t + 1) % config.train_freq == 0:
            r = dqn.train_phase(config, task, start, optimizer, env_steps, r)
    loss = torch.from_numpy(r.loss_sum / np.maximum(r.opt_steps, 1)) if r.opt_steps[0] else None
    return loss, int(r.opt_steps[0]), DQNMemory(dqn.to_numpy(r.buffer), env_steps), exp.steps


_LEARN = {"ppo": _ppo, "a2c": _a2c, "reinforce": _reinforce, "dqn": _dqn}


def train_from_experience(config: LearnerBase, task: LocalTask, exp: Experience) -> LocalResult:
    """One round of local training of the single client of ``task`` on ``exp``; the counts in
    the result are the transitions it learned from (REINFORCE: those of finished episodes) and the
    episodes that ended among them."""
    if exp.steps == 0:
        raise ValueError("no experience to learn from")
    start = client.begin(config, task)
    learn = _user if isinstance(config, user.UserLearnerConfig) else _LEARN[config.name]
    loss, opt_steps, memory, steps = learn(config, task, start, exp)
    outcome = client.finish(config, task, start, np.array([opt_steps]), memory)
    return client.result(outcome, task.env_state, np.array([steps]), np.array([exp.episodes]), loss)
