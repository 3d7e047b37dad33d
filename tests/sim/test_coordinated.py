"""The deployed server's coordinator, driven by simulated clients, aggregates as the simulator does."""

from __future__ import annotations

import numpy as np

from fedrl.server.config import ServerConfig
from fedrl.sim.config import parse_config
from fedrl.sim.coordinated import coordinated_round, open_coordinated
from fedrl.sim.engine import initial_state, sync_round
from fedrl.sim.setup import Setup


def test_the_coordinator_reproduces_the_simulators_rounds_exactly(tmp_path, tiny_config):
    # Prepare: every client takes part in every round; no gate, so every candidate is deployed
    experiment = parse_config({**tiny_config, "strategy": {"name": "fedavgm", "momentum": 0.5}})
    config = ServerConfig(experiment=experiment, gate={"enabled": False})
    setup = Setup(experiment)
    sim = initial_state(setup)
    coordinator, clients = open_coordinated(config, tmp_path / "state")

    # Execute
    for round_ in (1, 2):
        sim, _ = sync_round(setup, sim, round_)
        clients = coordinated_round(coordinator, clients, round_)

    # Assert: the same global model, bit for bit, and every update stored
    assert coordinator.deployed_version == 2
    np.testing.assert_array_equal(coordinator.model().params, sim.params)
    assert [r.n_updates for r in coordinator.status().rounds[:2]] == [3, 3]
