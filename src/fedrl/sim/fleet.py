"""A simulated fleet that behaves like a real one: slow devices, slow links, dropouts.

Each client gets a compute speed and a link latency, drawn once from the run seed. Local
training of ``n`` env steps then takes ``n * step_time_s / speed`` simulated seconds plus a
download and an upload over the link. Stragglers are a chosen fraction of clients that are
``straggler_slowdown`` times slower. Availability is either random (a client is away for a
round, or for a retry period in asynchronous mode, with probability ``dropout``) or an on/off
pattern (``on_rounds`` up, ``off_rounds`` down, each client with its own phase). None of this
slows the simulation itself: time here is simulated, so a thousand-client fleet with hour-long
rounds runs as fast as the learning does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrl.experiment.config import FleetConfig


@dataclass(frozen=True)
class Fleet:
    """Per-client speed (relative, 1 = nominal), latency (s) and on/off phase, fixed for a run."""

    config: FleetConfig
    speed: np.ndarray  # (N,)
    latency: np.ndarray  # (N,)
    phase: np.ndarray  # (N,) int offset into the on/off cycle
    straggler: np.ndarray  # (N,) bool

    def duration(self, clients: np.ndarray, env_steps: np.ndarray) -> np.ndarray:
        """Simulated seconds from receiving the model to the server receiving the update."""
        compute = env_steps * self.config.step_time_s / self.speed[clients]
        return compute + 2.0 * self.latency[clients]

    def available(self, clients: np.ndarray, round_: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean mask: which of ``clients`` can take part now."""
        if self.config.availability == "onoff":
            cycle = self.config.on_rounds + self.config.off_rounds
            return (round_ + self.phase[clients]) % cycle < self.config.on_rounds
        return rng.random(len(clients)) >= self.config.dropout


def make_fleet(config: FleetConfig, n_clients: int, rng: np.random.Generator) -> Fleet:
    """Draw every client's speed, latency, phase and straggler flag."""
    speed = np.exp(rng.uniform(np.log(0.25) * config.speed_heterogeneity, 0.0, n_clients))
    n_slow = round(config.straggler_fraction * n_clients)
    straggler = np.zeros(n_clients, dtype=bool)
    straggler[rng.choice(n_clients, n_slow, replace=False)] = True
    speed = np.where(straggler, speed / config.straggler_slowdown, speed)
    h = config.latency_heterogeneity
    latency = config.latency_s * rng.uniform(1 - h, 1 + h, n_clients)
    phase = rng.integers(0, config.on_rounds + config.off_rounds, n_clients)
    return Fleet(config, speed, latency, phase, straggler)
