"""The reference: single-agent Stable-Baselines3 PPO on Gymnasium's CartPole-v1.

Hyper-parameters are RL Baselines3 Zoo's tuned ones for CartPole-v1 (8 envs, n_steps 32,
batch 256, 20 epochs, gamma 0.98, GAE lambda 0.8, linear lr 1e-3 and clip 0.2). Run as a
script it prints one JSON line, so callers time it as a separate process, start-up included:

    python benchmarks/sb3_reference.py throughput --steps 16384
    python benchmarks/sb3_reference.py solve --max-steps 150000
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402


def _linear(start: float):
    return lambda progress: progress * start


def make_model(seed: int) -> PPO:
    """PPO with the zoo's CartPole-v1 settings."""
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    return PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=_linear(1e-3),
        clip_range=_linear(0.2),
        seed=seed,
        device="cpu",
    )


def throughput(steps: int, seed: int) -> dict:
    """Env steps per second of training, excluding model construction."""
    model = make_model(seed)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    return {"steps": steps, "steps_per_s": steps / (time.perf_counter() - start)}


def solve(max_steps: int, seed: int, every: int = 8192) -> dict:
    """Train in chunks of ``every`` steps, evaluating 10 greedy episodes after each, until the
    mean return reaches 475; wall time counts from process start."""
    model = make_model(seed)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=seed + 1000)
    steps, mean, curve = 0, 0.0, []
    while steps < max_steps:
        model.learn(total_timesteps=every, reset_num_timesteps=False)
        steps += every
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
        curve.append([steps, float(mean), time.perf_counter() - T0])
        if mean >= 475:
            break
    return {
        "solved": bool(mean >= 475),
        "env_steps": steps,
        "final_mean_return": float(np.round(mean, 1)),
        "wall_s": time.perf_counter() - T0,
        "curve": curve,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["throughput", "solve"])
    parser.add_argument("--steps", type=int, default=16384)
    parser.add_argument("--max-steps", type=int, default=150_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = throughput(args.steps, args.seed) if args.mode == "throughput" else solve(args.max_steps, args.seed)
    print(json.dumps(out))
