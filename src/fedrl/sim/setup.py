"""What only a simulated run derives from its config: the simulated fleet, its attackers, and the
backend its shards train on."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fedrl.experiment.setup import Setup
from fedrl.experiment.streams import ATTACK_STREAM, FLEET_STREAM
from fedrl.sim.attacks import malicious_clients
from fedrl.sim.fleet import Fleet, make_fleet
from fedrl.sim.ray_shards import RayShards
from fedrl.sim.shards import InProcess, Shards


@dataclass(frozen=True)
class SimSetup(Setup):
    """A run's ``Setup`` with the pieces a simulation adds, drawn once from the run seed."""

    @cached_property
    def fleet(self) -> Fleet:
        """Every client's simulated speed, link latency and availability pattern."""
        return make_fleet(self.config.fleet, self.config.federation.n_clients, self.rng(FLEET_STREAM))

    @cached_property
    def malicious(self) -> np.ndarray:
        """``(N,)`` bool: the attackers, known to the simulator only."""
        return malicious_clients(self.config.attack, self.config.federation.n_clients, self.rng(ATTACK_STREAM))

    @cached_property
    def random_policy(self) -> np.ndarray:
        """The fixed unrelated policy that ``random_policy`` attackers push towards."""
        return self.net.initial_params(seed=int(self.rng(ATTACK_STREAM, 1).integers(2**31)))

    @cached_property
    def shards(self) -> Shards:
        """The backend a round's shards train on (``backend``), started on first use."""
        backend = self.config.backend
        return InProcess() if backend.name == "inprocess" else RayShards(backend, self.config)

    def start_backend(self) -> Shards:
        """The backend, started now if it was not: a missing extra or an unreachable cluster is said here."""
        return self.shards

    def close(self) -> None:
        """Release the backend's workers, if started; a later round starts them again."""
        shards = self.__dict__.pop("shards", None)
        if shards is not None:
            shards.close()
