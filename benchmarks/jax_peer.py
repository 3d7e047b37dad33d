"""The JAX/XLA peer of ``benchmarks/throughput.py``, rebuilt so it can be measured in the same run.

A PureJaxRL-style federated PPO (Schulman et al., 2017; FedAvg, McMahan et al., 2017), written here
from the ideas alone with nothing but ``jax``, ``jax.numpy`` and ``numpy``: CartPole physics as pure
JAX functions with each client's physical parameters as one more ``vmap`` axis, the 64x64 tanh actor
and critic, orthogonal initialisation, Adam and gradient clipping by hand, and one ``jax.jit``'ed
function per round that runs every client's rollout (``lax.scan``), GAE (a reverse scan), 4 epochs of
4 minibatches of PPO and the FedAvg mean.

The setting is fedrl's throughput benchmark's, copied where it costs time:

- CartPole as ``fedrl.envs.cartpole`` computes it (Euler steps of Gymnasium's equations, failure
  beyond 12 degrees or 2.4 m, 500-step limit, same-step auto-reset), in float32, with pole
  half-length, pole mass, cart mass, gravity and push force drawn per client at heterogeneity 1 from
  the same random stream as ``fedrl.envs.base.sample_params``; 16 envs per client, carried over rounds.
- PPO as ``fedrl.agents.ppo`` with the benchmark's config: 16 envs x 64 steps (1,024 steps per client
  per round), time-outs bootstrapped with ``gamma * V(final_obs)`` (the critic run over the fleet's
  reached obs only at a step where some env timed out, as fedrl does), GAE (gamma 0.99, lambda 0.95),
  4 epochs x 4 minibatches of 256 (a fresh permutation per epoch and client, where fedrl draws one per
  epoch for all its clients: the same work), clip 0.2, value
  coefficient 0.5, entropy coefficient 0 (fedrl's default), advantages normalised per minibatch, each
  client's gradient clipped to norm 0.5, Adam (lr 1e-3, fedrl's default; eps 1e-5) fresh every round.
- FedAvg: the new global parameters are the clients' mean; every client starts a round from them.

Run with any Python that has JAX (not fedrl); the last line on stdout is one JSON record:

    python benchmarks/jax_peer.py --mode learn --clients 100     # env steps/s with learning
    python benchmarks/jax_peer.py --mode act --clients 1000      # actor, sample, env step; nothing kept
    python benchmarks/jax_peer.py --mode rollout --clients 100   # the trajectory a learner keeps
    python benchmarks/jax_peer.py --mode startup --t0 "$(date +%s.%N)"  # launch to the first round
    python benchmarks/jax_peer.py --mode check --clients 10 --rounds 30  # does it learn?
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

TAU = 0.02
THETA_LIMIT = 12 * 2 * np.pi / 360
X_LIMIT = 2.4
TIME_LIMIT = 500
# (standard, low, high) of length, masspole, masscart, gravity, force_mag, as fedrl.envs.cartpole has them
PARAM_RANGES = np.array([(0.5, 0.1, 0.9), (0.1, 0.05, 0.5), (1.0, 0.5, 2.0), (9.8, 7.0, 12.5), (10.0, 7.0, 13.0)])
HETEROGENEITY = 1.0
PARAMS_STREAM = 1  # fedrl.envs.base.PARAMS_STREAM: the same clients as fedrl's for a seed


class Setting(NamedTuple):
    """PPO and fleet hyper-parameters: the benchmark's config with fedrl's defaults for the rest."""

    n_envs: int = 16
    n_steps: int = 64
    epochs: int = 4
    minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    lr: float = 1e-3
    adam_eps: float = 1e-5
    max_grad_norm: float = 0.5
    hidden: int = 64


class Physics(NamedTuple):
    """One client's envs: cart position and velocity, pole angle and angular velocity, steps taken."""

    x: jax.Array  # (E,) float32
    x_dot: jax.Array
    theta: jax.Array
    theta_dot: jax.Array
    t: jax.Array  # (E,) int32


class Step(NamedTuple):
    """What one env step gives back (same-step auto-reset: ``state`` already fresh where done)."""

    state: Physics
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array  # (E, 4): the obs this step reached, before any reset


class Trajectory(NamedTuple):
    """``T`` steps of one client's ``E`` envs, as fedrl's ``Rollout`` holds them."""

    obs: jax.Array  # (T, E, 4)
    actions: jax.Array  # (T, E) int32
    logp: jax.Array
    values: jax.Array
    rewards: jax.Array  # time-outs bootstrapped
    dones: jax.Array  # float32
    last_value: jax.Array  # (E,)


class Batch(NamedTuple):
    """A client's samples for PPO, flattened over time and envs."""

    obs: jax.Array
    actions: jax.Array
    logp: jax.Array
    adv: jax.Array
    returns: jax.Array


class Adam(NamedTuple):
    """Adam's moments and step count for one client."""

    m: dict
    v: dict
    count: jax.Array


# ----------------------------------------------------------------------------------- environment


def sample_env_params(n_clients: int, seed: int) -> np.ndarray:
    """One row of physical parameters per client ``(C, 5)``, as ``fedrl.envs.base.sample_params`` draws them."""
    standard, low, high = PARAM_RANGES.T
    u = np.random.default_rng([seed, PARAMS_STREAM]).uniform(low, high, size=(n_clients, len(low)))
    return (standard + HETEROGENEITY * (u - standard)).astype(np.float32)


def fresh_physics(key: jax.Array, n_envs: int) -> Physics:
    """New episodes: every state variable uniform on [-0.05, 0.05], as in Gymnasium."""
    s = jax.random.uniform(key, (4, n_envs), minval=-0.05, maxval=0.05)
    return Physics(*s, t=jnp.zeros(n_envs, jnp.int32))


def observe(s: Physics) -> jax.Array:
    """The full state as ``(E, 4)`` float32."""
    return jnp.stack([s.x, s.x_dot, s.theta, s.theta_dot], axis=-1)


def transition(env_params: jax.Array, s: Physics, action: jax.Array) -> tuple[Physics, jax.Array]:
    """One Euler step of the cart-pole equations; derived masses computed here, from ``env_params`` ``(5,)``."""
    length, masspole, masscart, gravity, force_mag = env_params
    total_mass = masspole + masscart
    polemass_length = masspole * length
    force = jnp.where(action == 1, force_mag, -force_mag)
    cos, sin = jnp.cos(s.theta), jnp.sin(s.theta)
    temp = (force + polemass_length * s.theta_dot**2 * sin) / total_mass
    theta_acc = (gravity * sin - cos * temp) / (length * (4.0 / 3.0 - masspole * cos**2 / total_mass))
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    new = Physics(
        x=s.x + TAU * s.x_dot,
        x_dot=s.x_dot + TAU * x_acc,
        theta=s.theta + TAU * s.theta_dot,
        theta_dot=s.theta_dot + TAU * theta_acc,
        t=s.t + 1,
    )
    terminated = (jnp.abs(new.x) > X_LIMIT) | (jnp.abs(new.theta) > THETA_LIMIT)
    return new, terminated


def env_step(env_params: jax.Array, s: Physics, action: jax.Array, key: jax.Array) -> Step:
    """Step every env of a client, truncate at the time limit, and reset the envs whose episode ended."""
    new, terminated = transition(env_params, s, action)
    truncated = (new.t >= TIME_LIMIT) & ~terminated
    done = terminated | truncated
    fresh = fresh_physics(key, s.t.shape[0])
    state = Physics(*(jnp.where(done, a, b) for a, b in zip(fresh, new)))
    return Step(state, terminated, truncated, observe(new))


# ----------------------------------------------------------------------------------- network


def init_tower(key: jax.Array, sizes: list[int], head_gain: float) -> tuple:
    """A tanh MLP's ``((W, b), ...)``: orthogonal weights (gain sqrt 2 inside, ``head_gain`` last), zero biases."""
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        gain = head_gain if i == len(sizes) - 2 else np.sqrt(2)
        w = jax.nn.initializers.orthogonal(gain)(jax.random.fold_in(key, i), (n_in, n_out), jnp.float32)
        layers.append((w, jnp.zeros(n_out, jnp.float32)))
    return tuple(layers)


def init_params(key: jax.Array, hidden: int) -> dict:
    """Separate actor (4-h-h-2, head gain 0.01) and critic (4-h-h-1, head gain 1) towers."""
    actor_key, critic_key = jax.random.split(key)
    return {
        "actor": init_tower(actor_key, [4, hidden, hidden, 2], 0.01),
        "critic": init_tower(critic_key, [4, hidden, hidden, 1], 1.0),
    }


def mlp(layers: tuple, x: jax.Array) -> jax.Array:
    """The tower's output: tanh after every layer but the last."""
    for w, b in layers[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


def value(params: dict, obs: jax.Array) -> jax.Array:
    """The critic's value of each observation."""
    return mlp(params["critic"], obs)[..., 0]


# ----------------------------------------------------------------------------------- acting


def act_steps(params: dict, env_params: jax.Array, state: Physics, key: jax.Array, n_steps: int):
    """``n_steps`` of acting for one client: actor, Gumbel-max sample, env step; nothing kept."""

    def body(carry, _):
        state, key = carry
        key, act_key, env_key = jax.random.split(key, 3)
        action = jax.random.categorical(act_key, mlp(params["actor"], observe(state)))
        return (env_step(env_params, state, action, env_key).state, key), None

    (state, key), _ = lax.scan(body, (state, key), None, length=n_steps)
    return state, key


def client_step(params: dict, env_params: jax.Array, state: Physics, key: jax.Array):
    """One step of one client's envs with the stochastic policy: the state, the key and what a learner
    keeps (obs, action, log-prob, value, done, truncated, the obs reached, the length of an ended episode)."""
    key, act_key, env_key = jax.random.split(key, 3)
    obs = observe(state)
    logits = mlp(params["actor"], obs)
    action = jax.random.categorical(act_key, logits)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[:, 0]
    step = env_step(env_params, state, action, env_key)
    done = step.terminated | step.truncated
    row = (obs, action, logp, value(params, obs), done, step.truncated, step.final_obs, jnp.where(done, state.t + 1, 0))
    return step.state, key, row


def rollout(params: dict, env_params: jax.Array, state: Physics, keys: jax.Array, n_steps: int, gamma: float):
    """``n_steps`` of every client's envs with the global policy, kept for learning: a ``Trajectory``
    per client (leading axis: clients), the state, the keys and the summed lengths and count of the
    episodes that ended. A time-out is no failure (Pardo et al., 2018): its reward gets ``gamma`` times
    the critic's value of the obs reached, computed for the whole fleet at a step where some env
    timed out, as fedrl's ``collect`` does; hence the scan over time outside the clients' ``vmap``."""

    def body(carry, _):
        state, keys = carry
        state, keys, row = jax.vmap(client_step, in_axes=(None, 0, 0, 0))(params, env_params, state, keys)
        obs, actions, logp, values, dones, truncated, final_obs, lengths = row
        bootstrap = lax.cond(
            truncated.any(), lambda o: value(params, o), lambda o: jnp.zeros(o.shape[:-1], o.dtype), final_obs
        )
        rewards = 1.0 + gamma * bootstrap * truncated
        return (state, keys), (obs, actions, logp, values, rewards, dones.astype(jnp.float32), lengths, dones)

    (state, keys), rows = lax.scan(body, (state, keys), None, length=n_steps)
    obs, actions, logp, values, rewards, dones, lengths, ended = (jnp.swapaxes(x, 0, 1) for x in rows)
    last_value = value(params, jax.vmap(observe)(state))
    traj = Trajectory(obs, actions, logp, values, rewards, dones, last_value)
    return traj, state, keys, (lengths.sum(), ended.sum())


def gae(traj: Trajectory, gamma: float, gae_lambda: float) -> tuple[jax.Array, jax.Array]:
    """Advantages and returns ``(T, E)`` by GAE (Schulman et al., ICLR 2016), as a reverse scan."""

    def body(carry, row):
        next_value, last = carry
        reward, v, done = row
        alive = 1.0 - done
        delta = reward + gamma * next_value * alive - v
        last = delta + gamma * gae_lambda * alive * last
        return (v, last), last

    start = (traj.last_value, jnp.zeros_like(traj.last_value))
    _, adv = lax.scan(body, start, (traj.rewards, traj.values, traj.dones), reverse=True)
    return adv, adv + traj.values


# ----------------------------------------------------------------------------------- learning


def ppo_loss(params: dict, batch: Batch, s: Setting) -> jax.Array:
    """Clipped surrogate, value loss and entropy bonus on one minibatch, advantages normalised in it."""
    logits = mlp(params["actor"], batch.obs)
    log_probs = jax.nn.log_softmax(logits)
    new_logp = jnp.take_along_axis(log_probs, batch.actions[:, None], axis=-1)[:, 0]
    ratio = jnp.exp(new_logp - batch.logp)
    adv = (batch.adv - batch.adv.mean()) / (batch.adv.std(ddof=1) + 1e-8)  # torch's std: unbiased
    pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1 - s.clip_coef, 1 + s.clip_coef)).mean()
    v_loss = 0.5 * ((value(params, batch.obs) - batch.returns) ** 2).mean()
    entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
    return pg - s.ent_coef * entropy + s.vf_coef * v_loss


def adam_init(params: dict) -> Adam:
    """Zero moments: each round starts a fresh optimiser, as fedrl's clients do."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return Adam(zeros, zeros, jnp.zeros((), jnp.int32))


def clip_grads(grads: dict, max_norm: float) -> dict:
    """Scale the gradient to global norm ``max_norm`` at most (``min(1, max / (norm + 1e-6))``, as torch)."""
    norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
    scale = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
    return jax.tree.map(lambda g: g * scale, grads)


def adam_step(params: dict, grads: dict, opt: Adam, lr: float, eps: float) -> tuple[dict, Adam]:
    """One Adam step (betas 0.9, 0.999) in the form ``torch.optim.Adam`` computes it."""
    count = opt.count + 1
    m = jax.tree.map(lambda m, g: m + 0.1 * (g - m), opt.m, grads)
    v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, opt.v, grads)
    step = count.astype(jnp.float32)
    correction2 = jnp.sqrt(1 - 0.999**step)
    size = lr / (1 - 0.9**step)
    params = jax.tree.map(lambda p, m, v: p - size * m / (jnp.sqrt(v) / correction2 + eps), params, m, v)
    return params, Adam(m, v, count)


def improve(params: dict, batch: Batch, key: jax.Array, s: Setting) -> dict:
    """``epochs`` passes over the client's samples, each ``minibatches`` minibatch steps in a fresh order."""
    n = batch.obs.shape[0]
    size = n // s.minibatches

    def minibatch(carry, mb):
        params, opt = carry
        grads = jax.grad(ppo_loss)(params, mb, s)
        params, opt = adam_step(params, clip_grads(grads, s.max_grad_norm), opt, s.lr, s.adam_eps)
        return (params, opt), None

    def epoch(carry, epoch_key):
        order = jax.random.permutation(epoch_key, n)
        mbs = jax.tree.map(lambda x: x[order].reshape(s.minibatches, size, *x.shape[1:]), batch)
        return lax.scan(minibatch, carry, mbs)[0], None

    (params, _), _ = lax.scan(epoch, (params, adam_init(params)), jax.random.split(key, s.epochs))
    return params


def flatten_time(x: jax.Array) -> jax.Array:
    """``(T, E, ...)`` -> ``(T*E, ...)``."""
    return x.reshape(-1, *x.shape[2:])


def client_learn(params: dict, traj: Trajectory, key: jax.Array, s: Setting) -> dict:
    """One client's learning on its trajectory from the global ``params``: GAE, then PPO."""
    adv, returns = gae(traj, s.gamma, s.gae_lambda)
    batch = Batch(*(flatten_time(x) for x in (traj.obs, traj.actions, traj.logp, adv, returns)))
    return improve(params, batch, key, s)


@partial(jax.jit, static_argnames="s")
def fed_round(params: dict, env_params: jax.Array, state: Physics, keys: jax.Array, s: Setting):
    """A whole round: every client's rollout, then each client's learning (``vmap``), then FedAvg: the
    global parameters, the envs' state, the keys, and the summed lengths and count of the episodes that
    ended."""
    traj, state, keys, episodes = rollout(params, env_params, state, keys, s.n_steps, s.gamma)
    keys, learn_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    local = jax.vmap(client_learn, in_axes=(None, 0, 0, None))(params, traj, learn_keys, s)
    return jax.tree.map(lambda p: p.mean(0), local), state, keys, episodes


@partial(jax.jit, static_argnames="n_steps")
def fleet_act(params: dict, env_params: jax.Array, state: Physics, keys: jax.Array, n_steps: int):
    """``n_steps`` of acting for every client's envs (``act_steps``, vmapped)."""
    return jax.vmap(act_steps, in_axes=(None, 0, 0, 0, None))(params, env_params, state, keys, n_steps)


@partial(jax.jit, static_argnames=("n_steps", "gamma"))
def fleet_rollout(params: dict, env_params: jax.Array, state: Physics, keys: jax.Array, n_steps: int, gamma: float):
    """``n_steps`` of every client's envs kept for learning (``rollout``)."""
    return rollout(params, env_params, state, keys, n_steps, gamma)


# ----------------------------------------------------------------------------------- measuring


class Fleet(NamedTuple):
    """Everything a round takes: global parameters, per-client physics, env states and keys."""

    params: dict
    env_params: jax.Array
    state: Physics
    keys: jax.Array


def make_fleet(n_clients: int, seed: int, s: Setting) -> Fleet:
    """The round-0 fleet: one initial policy, clients' physics from ``seed``, fresh episodes."""
    key = jax.random.key(seed)
    init_key, reset_key, client_key = jax.random.split(key, 3)
    state = jax.vmap(fresh_physics, in_axes=(0, None))(jax.random.split(reset_key, n_clients), s.n_envs)
    env_params = jnp.asarray(sample_env_params(n_clients, seed))
    return Fleet(init_params(init_key, s.hidden), env_params, state, jax.random.split(client_key, n_clients))


def run_rounds(fleet: Fleet, rounds: int, s: Setting) -> tuple[Fleet, list]:
    """``rounds`` rounds; the fleet after them and each round's (summed lengths, episodes ended)."""
    params, env_params, state, keys = fleet
    episodes = []
    for _ in range(rounds):
        params, state, keys, ended = fed_round(params, env_params, state, keys, s)
        episodes.append(ended)
    jax.block_until_ready((params, state))
    return Fleet(params, env_params, state, keys), episodes


def measure_learn(n_clients: int, repeats: int, min_steps: int, seed: int, s: Setting) -> list[float]:
    """Env steps/s of whole rounds, after one warm-up (compile) round; one figure per repeat."""
    fleet, _ = run_rounds(make_fleet(n_clients, seed, s), 1, s)
    per_round = n_clients * s.n_envs * s.n_steps
    rounds = max(2, min_steps // per_round)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fleet, _ = run_rounds(fleet, rounds, s)
        rates.append(rounds * per_round / (time.perf_counter() - start))
    return rates


def measure_steps(mode: str, n_clients: int, repeats: int, min_steps: int, seed: int, s: Setting) -> list[float]:
    """Env steps/s of acting only (``act``) or of the rollout a learner keeps (``rollout``): one jitted
    scan of ``max(64, min_steps // (clients * envs))`` steps, as many as the benchmark takes, after a
    warm-up (compile) call."""
    fleet = make_fleet(n_clients, seed, s)
    n_steps = max(64, min_steps // (n_clients * s.n_envs))
    if mode == "act":
        call = partial(fleet_act, fleet.params, fleet.env_params, n_steps=n_steps)
    else:
        call = partial(fleet_rollout, fleet.params, fleet.env_params, n_steps=n_steps, gamma=s.gamma)
    out = jax.block_until_ready(call(fleet.state, fleet.keys))  # everything it returns, the trajectory too
    rates = []
    for _ in range(repeats):
        state, keys = out if mode == "act" else out[1:3]
        start = time.perf_counter()
        out = jax.block_until_ready(call(state, keys))
        rates.append(n_clients * s.n_envs * n_steps / (time.perf_counter() - start))
    return rates


def since_launch(t0: float | None) -> float:
    """Seconds since ``t0`` (the caller's ``time.time()`` at launch), or else since this process started."""
    if t0 is not None:
        return time.time() - t0
    with open("/proc/self/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) - started


def measure_startup(n_clients: int, seed: int, t0: float | None, s: Setting) -> dict:
    """Seconds from launch to the first round compiled and ready to run, and to its end."""
    fleet = make_fleet(n_clients, seed, s)
    compiled = fed_round.lower(*fleet, s).compile()
    ready = since_launch(t0)
    jax.block_until_ready(compiled(*fleet))
    return {"ready_s": ready, "first_round_s": since_launch(t0)}


def check(n_clients: int, rounds: int, seed: int, s: Setting) -> list[float]:
    """Train ``rounds`` rounds, printing the mean return of each round's completed episodes."""
    fleet, returns = make_fleet(n_clients, seed, s), []
    for r in range(rounds):
        fleet, [(lengths, ended)] = run_rounds(fleet, 1, s)
        returns.append(float(lengths) / max(int(ended), 1))
        print(f"round {r + 1:3d}: {int(ended):5d} episodes ended, mean return {returns[-1]:7.1f}", flush=True)
    return returns


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("learn", "act", "rollout", "startup", "check"), required=True)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed measurements after one warm-up")
    parser.add_argument("--min-steps", type=int, default=400_000, help="env steps per measurement, at least")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of --mode check")
    parser.add_argument("--t0", type=float, default=None, help="time.time() at launch (startup; else process start)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure the chosen mode and print one JSON line."""
    args, s = parse_args(argv), Setting()
    record = {"mode": args.mode, "clients": args.clients}
    if args.mode == "learn":
        rates = measure_learn(args.clients, args.repeats, args.min_steps, args.seed, s)
    elif args.mode in ("act", "rollout"):
        rates = measure_steps(args.mode, args.clients, args.repeats, args.min_steps, args.seed, s)
    elif args.mode == "startup":
        record.update(measure_startup(args.clients, args.seed, args.t0, s))
    else:
        record["returns"] = [round(x, 1) for x in check(args.clients, args.rounds, args.seed, s)]
    if args.mode in ("learn", "act", "rollout"):
        record.update(steps_per_s=statistics.median(rates), repeats=rates)
    record["jax"] = jax.__version__
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
