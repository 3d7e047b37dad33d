"""The acting loop: a device acts in its environment all the time, at the environment's pace.

One thread steps the environment with the current policy (``fedrl.edge.acting``), records each
transition (``fedrl.edge.recorder``) and goes on while the agent trains, talks to the server or
waits: training never holds up a decision, and a new version takes over between two steps. A
learning device explores (``Policy.explore``); one that only runs the policy acts greedily.
The loop keeps counts, the returns of its latest episodes and the latency of its decisions
(policy only, not the environment), which the agent logs.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedrl.edge.acting import ActingPolicy
from fedrl.edge.recorder import Recorder

log = logging.getLogger("fedrl.edge")
LATENCY_WINDOW = 10_000  # decisions whose latency the percentiles cover


class Actor:
    """Acts in ``env`` (anything with Gymnasium's ``reset`` and ``step``) with ``acting``'s policy in a
    thread of its own, recording into ``recorder`` (None: a device that only runs the policy), until
    stopped or ``max_steps`` decisions are made."""

    def __init__(
        self,
        env: Any,
        acting: ActingPolicy,
        recorder: Recorder | None,
        seed: int | None,
        epsilon: Callable[[int], float] | None = None,
        explore: bool = True,
        period_s: float = 0.0,
        max_steps: int | None = None,
    ) -> None:
        self.env, self.acting, self.recorder = env, acting, recorder
        self._rng = np.random.default_rng(seed)
        self._seed = None if seed is None else int(self._rng.integers(2**31))
        self._epsilon = epsilon or (lambda _steps: 0.0)
        self._explore, self._period, self._max_steps = explore, period_s, max_steps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedrl-act", daemon=True)
        self._latency_ns: collections.deque[int] = collections.deque(maxlen=LATENCY_WINDOW)
        self.returns: collections.deque[float] = collections.deque(maxlen=100)
        self.steps = 0
        self.episodes = 0
        self.error: BaseException | None = None  # what stopped the loop, if the environment failed

    def start(self) -> None:
        """Begin acting (the loop waits for a first policy)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step and close the environment."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def alive(self) -> bool:
        """Whether the loop is running."""
        return self._thread.is_alive()

    def reset_latency(self) -> None:
        """Forget the latencies measured so far (to measure one phase of the device's life)."""
        self._latency_ns.clear()

    def latency_us(self) -> dict[str, float]:
        """p50, p99 and max decision latency in microseconds over the latest decisions."""
        sample = np.array(self._latency_ns, dtype=np.float64)
        if sample.size == 0:
            return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
        p50, p99 = np.percentile(sample, [50, 99]) / 1e3
        return {"p50": float(p50), "p99": float(p99), "max": float(sample.max() / 1e3)}

    def _decide(self, policy, obs):
        started = time.perf_counter_ns()
        if self._explore and not policy.greedy:
            action, recorded = policy.explore(obs, self._rng, self._epsilon(self.steps))
        else:
            action = recorded = policy.act(obs)
        self._latency_ns.append(time.perf_counter_ns() - started)
        return action, recorded

    def _loop(self) -> None:
        try:
            obs, _ = self.env.reset(seed=self._seed)
            episode_return, tick = 0.0, time.monotonic()
            while not self._stop.is_set() and self.steps != self._max_steps:
                policy = self.acting.current
                if policy is None:
                    self._stop.wait(0.05)
                    continue
                action, recorded = self._decide(policy, obs)
                next_obs, reward, terminated, truncated, _ = self.env.step(action)
                if self.recorder is not None:
                    self.recorder.add(obs, recorded, reward, terminated, truncated, next_obs, policy.tag)
                self.steps += 1
                episode_return += float(reward)
                if terminated or truncated:
                    self.returns.append(episode_return)
                    self.episodes += 1
                    episode_return = 0.0
                    obs, _ = self.env.reset()
                else:
                    obs = next_obs
                if self._period > 0:
                    tick += self._period
                    self._stop.wait(max(0.0, tick - time.monotonic()))
        except Exception as exc:  # a device's environment may fail in any way: the agent reports it
            self.error = exc
            log.error("acting_stopped", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}})
        finally:
            self.env.close()
