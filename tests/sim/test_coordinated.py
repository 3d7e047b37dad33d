"""The deployed server's coordinator, driven by simulated clients, aggregates as the simulator does."""

from __future__ import annotations

import numpy as np
import pytest

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



@pytest.mark.parametrize("compression", [
    {"sparsify": "topk", "ratio": 0.1, "bits": 8, "error_feedback": True},  # biased, with a residual on each client
    {"sparsify": "randomk", "ratio": 0.1, "bits": 4},  # unbiased: a seed instead of indices
], ids=["topk-8bit-feedback", "randomk-4bit"])
def test_a_compressed_run_through_the_coordinator_matches_the_simulator_and_its_uplink_bytes(tmp_path, tiny_config, compression):
    # Prepare
    experiment = parse_config({**tiny_config, "pipeline": {"compression": compression}})
    config = ServerConfig(experiment=experiment, gate={"enabled": False})
    setup = Setup(experiment)
    sim = initial_state(setup)
    coordinator, clients = open_coordinated(config, tmp_path / "state")

    # Execute
    uplink = []
    for round_ in (1, 2, 3):
        sim, stats = sync_round(setup, sim, round_)
        clients = coordinated_round(coordinator, clients, round_)
        uplink.append(stats.traffic.uplink)

    # Assert: the same global model and client residuals, bit for bit, from the same bytes
    np.testing.assert_array_equal(coordinator.model().params, sim.params)
    assert clients.pipeline_state.keys() == sim.pipeline_state.keys()
    for key in sim.pipeline_state:
        np.testing.assert_array_equal(clients.pipeline_state[key], sim.pipeline_state[key])
    assert [r.uplink_bytes for r in coordinator.status().rounds[:3]] == uplink
    assert uplink[0] < 3 * 4 * setup.net.spec.dim / 4
