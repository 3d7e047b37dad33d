"""Hierarchical aggregation (``federation.regions``): regions reduce their clients' updates, the
root averages the regions'."""

import numpy as np
import pytest

from fedrl.core.update import Update
from fedrl.experiment.aggregation import aggregate_round, region_of, region_update, regional_updates
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import apply_override, parse_config
from fedrl.experiment.setup import Setup
from fedrl.server.config import load_server_config
from fedrl.sim import run as runs

DIM = 29  # the parameters of the tiny network below


def _setup(*overrides) -> Setup:
    """12 clients of a tiny network whose deltas the tests make up."""
    data = {"learner": {"hidden": [2]}, "federation": {"n_clients": 12}}
    for assignment in overrides:
        data = apply_override(data, assignment)
    return Setup(parse_config(data))


def _close(setup: Setup, deltas: np.ndarray, steps: list[int]) -> np.ndarray:
    """The delta one round makes of clients 0..n-1's ``deltas`` ``(n, DIM)``."""
    assert setup.net.spec.dim == DIM
    params = np.zeros(setup.net.spec.dim, dtype=np.float32)
    updates = [Update(c, 0, d.astype(np.float32), s) for c, (d, s) in enumerate(zip(deltas, steps))]
    return aggregate_round(setup, setup.strategy.init(params), params, 0, 1, updates).params - params


def test_clients_fall_into_consecutive_regions():
    setup = _setup("federation.regions=4")
    np.testing.assert_array_equal(region_of(setup, np.arange(12)), np.repeat(np.arange(4), 3))


def test_with_the_mean_rule_regions_make_the_flat_fedavg_model():
    # Prepare: 12 clients with their own deltas and unequal step counts
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(12, DIM))
    steps = [int(s) for s in rng.integers(100, 1024, size=12)]
    # Act
    flat = _close(_setup(), deltas, steps)
    regional = _close(_setup("federation.regions=4"), deltas, steps)
    # Assert: a weighted mean of regions' weighted means, each weighted by its clients' steps, is the flat mean
    np.testing.assert_allclose(regional, flat, rtol=1e-5, atol=1e-7)
    assert not np.allclose(flat, deltas.mean(axis=0), atol=1e-3)  # the weights mattered


def test_the_robust_rule_runs_within_each_region_where_single_updates_are_seen():
    # Prepare: in each region of 3, one client sends a huge update; the others agree
    deltas = np.ones((12, DIM))
    deltas[[0, 3, 6, 9]] = 1e3
    steps = [1024] * 12
    # Act
    flat_mean = _close(_setup(), deltas, steps)
    regional_median = _close(_setup("federation.regions=4", "strategy.robust.rule=median"), deltas, steps)
    # Assert: each region's median drops its attacker, and the root's mean of regions is the honest delta
    np.testing.assert_allclose(regional_median, 1.0)
    assert flat_mean.max() > 200


def test_a_norm_bound_clips_each_client_inside_its_region():
    deltas = np.zeros((12, DIM))
    deltas[0, 0] = 100.0  # one client far out; the bound clips it to norm 1 before its region's mean
    regional = _close(_setup("federation.regions=4", "strategy.robust.norm_bound=1.0"), deltas, [1024] * 12)
    assert regional[0] == pytest.approx(1.0 / 12)


def test_a_run_with_regions_trains_and_counts_clients_not_regions(tmp_path, tiny_config):
    config = parse_config(apply_override(apply_override(tiny_config, "federation.n_clients=6"), "federation.regions=3"))
    current = runs.start(config, tmp_path / "run")
    results = [r for r, _ in current.rounds(tensorboard=False)]
    assert [r.stats.n_updates for r in results] == [6, 6, 6]
    assert np.isfinite(results[-1].global_mean_return)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["strategy.name=fedbuff"], "fedbuff applies updates as they arrive"),
        (["pipeline.dp.mode=central", "pipeline.clip_norm=1.0", "pipeline.dp.noise_multiplier=1.0"], "central DP"),
        (["strategy.name=scaffold"], "SCAFFOLD's control deltas"),
        (["federation.clusters=2"], "clustered federation"),
        (["strategy.robust.rule=krum", "strategy.robust.byzantine=1"], "krum needs more than 2 x byzantine"),
    ],
)
def test_what_regions_cannot_forward_is_refused_by_name(overrides, reason):
    with pytest.raises(ConfigError, match=f"federation.regions.*not available here: {reason}"):
        _setup("federation.regions=2", *overrides)


def test_more_regions_than_clients_are_refused():
    with pytest.raises(ConfigError, match="federation.regions.*more regions than the 12 clients"):
        _setup("federation.regions=13")


def test_a_deployed_root_waits_for_one_update_per_region_unless_told():
    hierarchy = ["experiment.federation.n_clients=8", "experiment.federation.regions=2"]
    assert load_server_config(None, hierarchy).updates_per_round == 2
    assert load_server_config(None, [*hierarchy, "rounds.updates_per_round=3"]).updates_per_round == 3


def test_a_deployed_root_passes_a_regions_reduction_as_it_is_and_clips_a_device_of_its_own():
    # Prepare: a median of three clipped deltas may be longer than the bound (here 1.04 > 1)
    setup = _setup("federation.regions=2", "strategy.robust.rule=median", "strategy.robust.norm_bound=1.0")
    vectors = np.zeros((3, DIM), dtype=np.float32)
    vectors[:, :3] = [[0.6, 0.8, 0.0], [0.8, 0.0, 0.6], [0.0, 0.6, 0.8]]
    region = regional_updates(setup, [Update(c, 0, v, 100) for c, v in enumerate(vectors)], 0)[0]
    assert np.linalg.norm(region.delta) > 1.0 and region.clients == 3

    # Execute: the root, whose senders are a region (id 7) and a device that failed over to it (id 9)
    device = Update(9, 0, 3 * vectors[0], 100)
    forwarded = regional_updates(setup, [Update(7, 0, region.delta, 300, clients=3), device], 0, by_sender=True)

    # Assert: the region's update as it came, the device's clipped as in any region
    np.testing.assert_array_equal(forwarded[0].delta, region.delta)
    assert (forwarded[0].env_steps, forwarded[0].clients) == (300, 3)
    np.testing.assert_allclose(np.linalg.norm(forwarded[1].delta), 1.0, rtol=1e-6)


def test_a_region_of_regions_passes_its_regions_reductions_on_and_weighs_them_with_its_devices():
    # Prepare: a region's median of three clipped deltas, longer than the bound; two devices of its own
    setup = _setup("federation.regions=2", "strategy.robust.rule=median", "strategy.robust.norm_bound=1.0")
    vectors = np.zeros((3, DIM), dtype=np.float32)
    vectors[:, :3] = [[0.6, 0.8, 0.0], [0.8, 0.0, 0.6], [0.0, 0.6, 0.8]]
    below = regional_updates(setup, [Update(c, 0, v, 100) for c, v in enumerate(vectors)], 0)[0]
    child = Update(7, 0, below.delta, 300, clients=3)
    devices = [Update(8, 0, 3 * vectors[0], 100), Update(9, 0, 3 * vectors[1], 100)]

    # Execute: what the region between them and the root forwards
    forwarded, refused = region_update(setup, [devices[0], child, devices[1]], 0, frozenset({7}))

    # Assert: its devices clipped and reduced by the rule, the region below's reduction as it came
    # (neither clipped again nor one vote of the median), weighted 200 to 300 steps; five devices in all
    own = regional_updates(setup, devices, 0, by_sender=False)[0].delta
    np.testing.assert_allclose(forwarded.delta, (200 * own + 300 * below.delta) / 500, rtol=1e-6)
    assert (forwarded.env_steps, forwarded.clients, refused) == (500, 5, 0)
    alone, _ = region_update(setup, [child], 0, frozenset({7}))
    np.testing.assert_array_equal(alone.delta, below.delta)
