"""A deployed hierarchy in one process: a root coordinator, two regions (``RegionCoordinator`` and
its ``Upstream``), and simulated devices that train in the simulator's shards and submit to their
region as an edge agent would. The link between a region and the root calls the root's
coordinator as its gRPC service does; ``tests/region/test_aggregator_process.py`` runs the same
over real gRPC in separate processes.

What a user relies on: the hierarchy makes the model the simulator's ``federation.regions`` makes;
a region's weight is its devices' steps, capped at its enrolment; what only a region may send is
refused from a device and the reverse.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import yaml

from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats
from fedrl.core.securestats import to_words
from fedrl.edge.secure import run_secure_round
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import parse_config, read_resolved
from fedrl.policy.usercode import only_code
from fedrl.region.upstream import Upstream
from fedrl.server.app import Liveness
from fedrl.server.config import ServerConfig, load_region_config
from fedrl.server.coordinator import Coordinator
from fedrl.server.region import RegionCoordinator
from fedrl.sim.clients import train_clients
from fedrl.sim.engine import initial_state
from fedrl.sim.setup import SimSetup
from fedrl.sim.sync import sync_round
from fedrl.wire.records import Model, Reason, Rejected, Submission, Task, Wait


class DirectLink:
    """A ``Link`` that calls a coordinator in this process as its gRPC service would, as ``name``."""

    def __init__(self, coordinator: Coordinator, name: str) -> None:
        self.coordinator, self.name = coordinator, name

    def register(self):
        return self.coordinator.register(self.name)

    def heartbeat(self, acting_version):
        return self.coordinator.heartbeat(self.name, acting_version)

    def task(self):
        return self.coordinator.task(self.name)

    def pull(self, version):
        self.coordinator.admit(self.name)
        return self.coordinator.model(version)

    def push(self, submission):
        return self.coordinator.submit(self.name, submission)

    def secure(self, round_, step, payload):
        raise AssertionError("the root runs no secure aggregation: its regions do, with their devices")

    def close(self):
        """Nothing to release: the coordinator is the test's."""


def device(i: int) -> str:
    return f"dev-{i}"


def open_root(experiment, state_dir, clock=time.time) -> Coordinator:
    """A root (or flat) server's coordinator without the gate: every candidate deploys."""
    return Coordinator.open(ServerConfig(experiment=experiment, gate={"enabled": False}), state_dir, clock=clock)


def signed(s: Submission) -> Submission:
    """``s`` with the digest its sender computes."""
    return replace(s, digest=s.sent_digest)


class Hierarchy:
    """A root and two regions in ``tmp_path``; devices 0..n/2-1 in region ``a``, the rest in ``b``.
    ``members`` and ``parents`` make another tree: each region's devices, and the region (or None:
    the root) each region forwards to, parents first; ``region_overrides`` may name each region's."""

    def __init__(
        self,
        tmp_path,
        experiment: dict,
        region_overrides: list[str] | dict[str, list[str]] = (),
        clock=time.time,
        members: dict[str, list[int]] | None = None,
        parents: dict[str, str | None] | None = None,
        root_rounds: dict | None = None,
    ):
        self.experiment = parse_config(experiment)
        self.setup = SimSetup(self.experiment)
        config = ServerConfig(experiment=self.experiment, gate={"enabled": False}, rounds=root_rounds or {})
        self.root = Coordinator.open(config, tmp_path / "root", clock=clock)
        n = self.experiment.federation.n_clients
        self.members = members or {"a": list(range(n // 2)), "b": list(range(n // 2, n))}
        self.parents = parents or dict.fromkeys(self.members)
        self.regions, self.upstreams = {}, {}
        for name, parent_name in self.parents.items():
            parent = self.root if parent_name is None else self.regions[parent_name]
            parent.add_client(f"region-{name}", devices=len(self._devices_under(name)))
            link = DirectLink(parent, f"region-{name}")
            registration = link.register()
            overrides = region_overrides.get(name, []) if isinstance(region_overrides, dict) else region_overrides
            config = load_region_config(None, list(overrides), read_resolved(registration.experiment_yaml))
            model = link.pull(registration.deployed_version)
            region = RegionCoordinator.open_region(
                config, tmp_path / f"region-{name}", f"region-{name}", model, clock=clock
            )
            for i in self.members.get(name, []):
                region.add_client(device(i))
                region.register(device(i))
            self.regions[name] = region
            self.upstreams[name] = Upstream(link, region, threading.Event())
        self.clients = initial_state(self.setup)

    def _devices_under(self, name: str) -> list[int]:
        """The devices region ``name`` stands for: its own and those of every region below it."""
        below = [child for child, parent in self.parents.items() if parent == name]
        return self.members.get(name, []) + [i for child in below for i in self._devices_under(child)]

    def region_of(self, i: int) -> RegionCoordinator:
        return next(self.regions[name] for name, members in self.members.items() if i in members)

    def sync(self) -> None:
        """Each region hears from its parent (parents first): forwards what it has, follows the version,
        takes a round."""
        for upstream in self.upstreams.values():
            upstream.step()

    def devices_train(self, round_: int, only: set[int] | None = None) -> dict[int, Task]:
        """Devices (``only`` these) heartbeat and ask their region for work; those given a task train
        from its base version (in the simulator's shards) and submit it."""
        n = self.experiment.federation.n_clients
        tasks = {}
        for i in range(n):
            if only is not None and i not in only:
                continue
            region = self.region_of(i)
            region.heartbeat(device(i), region.deployed_version)
            if isinstance(task := region.task(device(i)), Task):
                tasks[i] = task
        if not tasks:
            return tasks
        base = next(iter(tasks.values())).base_version
        model = self.region_of(next(iter(tasks))).model(base)
        self.clients = replace(self.clients, params=model.params, version=model.version)
        sent, self.clients, _ = train_clients(self.setup, self.clients, np.array(sorted(tasks)), (round_,))
        for u in (received.update for received in sent):
            task = tasks[u.client_id]
            s = Submission(
                f"{device(u.client_id)}-r{task.round}",
                device(u.client_id),
                task.round,
                task.base_version,
                u.delta,
                u.env_steps,
                u.metrics.as_mapping(),
            )
            self.region_of(u.client_id).submit(device(u.client_id), signed(s))
        return tasks

    def round(self, round_: int) -> None:
        """One whole round: regions take it, devices train, regions reduce and forward (those lowest
        in the tree first), the root closes it."""
        self.sync()
        self.sync()  # regions below regions take the round their parents took
        self.devices_train(round_)
        for name in reversed(self.parents):
            self.regions[name].tick()
            self.upstreams[name].step()
        self.root.tick()
        self.sync()  # the regions copy the new version


@pytest.fixture
def hierarchy_config(tiny_config):
    return {**tiny_config, "federation": {**tiny_config["federation"], "n_clients": 4, "regions": 2}}


@pytest.mark.parametrize(
    "robust",
    [{"rule": "mean"}, {"rule": "median"}, {"rule": "median", "norm_bound": 0.05}],
    ids=["mean", "median", "median-clipped"],  # clipped: the root must not clip a region's median again
)
def test_a_deployed_hierarchy_makes_the_simulators_regional_model(tmp_path, hierarchy_config, robust):
    # Prepare: three devices a region (a coordinate-wise median of three clipped deltas may exceed the bound)
    federation = {**hierarchy_config["federation"], "n_clients": 6}
    strategy = {"name": "fedavgm", "momentum": 0.5, "robust": robust}
    experiment = {**hierarchy_config, "federation": federation, "strategy": strategy}
    h = Hierarchy(tmp_path, experiment)
    sim = initial_state(h.setup)

    # Execute: two rounds in both runtimes
    for round_ in (1, 2):
        sim, _ = sync_round(h.setup, sim, round_)
        h.round(round_)

    # Assert: the root deployed the simulator's model, bit for bit; each region forwarded once a round
    assert h.root.deployed_version == 2
    np.testing.assert_array_equal(h.root.model().params, sim.params)
    assert [r.n_updates for r in h.root.status().rounds[:2]] == [2, 2]
    assert all(region.deployed_version == 2 for region in h.regions.values())
    assert [r.n_updates for r in h.regions["a"].status().rounds if r.closed_at] == [3, 3]


THREE_TIERS = {  # regions a and b forward to region mid, which forwards to the root beside region c
    "members": {"a": [0, 1, 2], "b": [3, 4, 5], "c": [6, 7, 8]},
    "parents": {"mid": None, "a": "mid", "b": "mid", "c": None},
    "root_rounds": {"updates_per_round": 2},  # mid and c
    "region_overrides": {"mid": ["rounds.updates_per_round=2"]},  # a and b
}


@pytest.mark.parametrize("robust", [{"rule": "mean"}, {"rule": "median", "norm_bound": 0.05}], ids=["mean", "median"])
def test_regions_of_regions_make_the_model_of_their_leaves_at_the_root(tmp_path, hierarchy_config, robust):
    # Prepare: nine devices in three regions, two of them behind a region of regions (three devices a
    # region: their median may exceed the norm bound, which mid must not apply again)
    federation = {**hierarchy_config["federation"], "n_clients": 9, "regions": 3}
    experiment = {**hierarchy_config, "federation": federation, "strategy": {"name": "fedavgm", "robust": robust}}
    h = Hierarchy(tmp_path, experiment, **THREE_TIERS)
    sim = initial_state(h.setup)

    # Execute: two rounds of the three tiers, and of the simulator's three regions under one root
    for round_ in (1, 2):
        sim, _ = sync_round(h.setup, sim, round_)
        h.round(round_)

    # Assert: mid passed its regions' reductions on (not clipped, not a vote of its rule) weighted by
    # their steps, so the root made the simulator's model but for the order of float sums
    assert h.root.deployed_version == 2 and all(r.deployed_version == 2 for r in h.regions.values())
    np.testing.assert_allclose(h.root.model().params, sim.params, rtol=1e-5, atol=1e-7)
    assert not np.array_equal(h.root.model().params, h.root.model(0).params)
    assert [r.n_updates for r in h.root.status().rounds[:2]] == [2, 2]
    assert [r.n_updates for r in h.regions["mid"].status().rounds if r.closed_at] == [2, 2]
    forwarded = h.root._store.round_records(2)
    assert {r["client"]: (r["clients"], r["env_steps"]) for r in forwarded} == {
        "region-mid": (6, 6 * 256),
        "region-c": (3, 3 * 256),
    }


def test_a_region_of_regions_under_secure_aggregation_leaves_the_protocol_to_its_regions(tmp_path, hierarchy_config):
    # Prepare: a secure three-tier hierarchy; mid has a device of its own besides regions a and b
    federation = {**hierarchy_config["federation"], "n_clients": 10, "regions": 3}
    pipeline = {"secure_aggregation": {"enabled": True, "clip": 5.0, "threshold": 0.5}}
    experiment = {**hierarchy_config, "federation": federation, "pipeline": pipeline}
    tiers = {**THREE_TIERS, "members": {**THREE_TIERS["members"], "mid": [9]}}
    h = Hierarchy(tmp_path, experiment, **tiers)
    h.sync()
    h.sync()
    mid = h.regions["mid"]

    # Execute: mid's own device asks for work; region a asks mid
    own = mid.task(device(9))
    region_task = mid.task("region-a")

    # Assert: like the root, mid runs no protocol: its device trains through a leaf region only
    assert isinstance(own, Wait) and "region" in own.reason
    assert isinstance(region_task, Task) and mid._secure is None
    assert h.regions["a"]._secure is not None


RULE = "regionrule:longest"


def test_a_rule_of_the_users_runs_at_a_region_whose_operator_allows_it(tmp_path, hierarchy_config, monkeypatch):
    # Prepare: a robust rule of the user's, importable at the root and at the regions
    (tmp_path / "regionrule.py").write_text(
        "import numpy as np\n\ndef longest(stack, weights):\n"
        "    return stack[int(np.argmax(np.linalg.norm(stack, axis=1)))].copy()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    experiment = {**hierarchy_config, "strategy": {"name": "fedavg", "robust": {"rule": RULE}}}

    # Execute: regions whose operator allows the rule reduce round 1
    with only_code([RULE]):
        h = Hierarchy(tmp_path / "allowed", experiment)
        h.sync()
        h.devices_train(1)
        h.regions["a"].tick()
    region_a = h.regions["a"]
    devices = region_a._store.read_updates(region_a._store.round_records(1), region_a.dim)

    # Assert: the region ran the rule (its update is its longest device delta), a device is told mean
    longest = max(devices, key=lambda u: np.linalg.norm(u.delta))
    np.testing.assert_array_equal(region_a.outbox().delta, longest.delta)
    assert read_resolved(h.root.register(device(0)).experiment_yaml).strategy.robust.rule == "mean"
    # a region whose operator did not allow the rule stops at its start, naming the option
    h.root.add_client("region-c", devices=1)
    registration = DirectLink(h.root, "region-c").register()
    config = load_region_config(None, [], read_resolved(registration.experiment_yaml))
    with only_code([]), pytest.raises(ConfigError, match=f"--allow-code {RULE}"):
        RegionCoordinator.open_region(config, tmp_path / "region-c", "region-c", h.root.model())


def test_a_tier_above_secure_regions_forwards_their_pooled_statistics(tmp_path, hierarchy_config):
    # Prepare: a secure three-tier hierarchy with the fleet's statistics; round 1 open at mid
    federation = {**hierarchy_config["federation"], "n_clients": 9, "regions": 3}
    learner = {**hierarchy_config["learner"], "normalize": {"obs": True}}
    pipeline = {"secure_aggregation": {"enabled": True, "threshold": 2}}
    h = Hierarchy(
        tmp_path,
        {**hierarchy_config, "federation": federation, "learner": learner, "pipeline": pipeline},
        **THREE_TIERS,
    )
    h.sync()
    mid, dim = h.regions["mid"], h.setup.net.spec.dim
    rng = np.random.default_rng(5)
    pooled = {name: NormStats(Moments.of(rng.normal(size=(30 + 10 * i, 4))), None) for i, name in enumerate("ab")}

    # Execute: regions a and b forward their secure sums' means and pooled statistics to mid
    for name in "ab":
        s = Submission(
            f"region-{name}.round1",
            f"region-{name}",
            1,
            0,
            np.full(dim, 0.01, np.float32),
            3 * 256,
            norm=pooled[name],
            clients=3,
        )
        mid.submit(f"region-{name}", signed(s))
    mid.tick()

    # Assert: mid forwards both regions' statistics pooled (the root refuses a region's update without them)
    forwarded = mid.outbox()
    want = pooled["a"].merge(pooled["b"])
    assert forwarded.clients == 6 and forwarded.norm.obs.count == want.obs.count
    np.testing.assert_allclose(forwarded.norm.obs.m2, want.obs.m2, rtol=1e-12)


def test_a_region_enrolled_below_a_secure_region_mid_round_counts_from_its_next_round(tmp_path, hierarchy_config):
    # Prepare: a secure hierarchy whose region a has opened round 1 with its devices' protocol
    pipeline = {"secure_aggregation": {"enabled": True, "clip": 5.0, "threshold": 0.5}}
    h = Hierarchy(tmp_path, {**hierarchy_config, "pipeline": pipeline})
    h.sync()
    region_a = h.regions["a"]

    # Execute: a region is enrolled below a; its devices ask for work
    region_a.add_client("region-x", devices=1)
    asked = [region_a.task(device(i)) for i in h.members["a"]]

    # Assert: the open round still runs a's protocol among its devices
    assert all(isinstance(task, Task) for task in asked) and region_a._secure is not None


def test_a_regions_update_weighs_its_devices_steps_and_is_capped_at_its_enrolment(tmp_path, hierarchy_config):
    # Prepare: round 1 open in both regions; the devices of region a train
    h = Hierarchy(tmp_path, hierarchy_config)
    h.sync()
    h.devices_train(1, only={0, 1})
    h.regions["a"].tick()

    # Execute: what region a forwards
    out = h.regions["a"].outbox()

    # Assert: one update of both devices' steps, for the root's round 1 from its version 0
    assert (out.client, out.round, out.base_version, out.clients) == ("region-a", 1, 0, 2)
    assert out.env_steps == 2 * 256
    assert out.update_id == "region-a.round1"
    # claiming more devices than it was enrolled for, or more steps than they may take, is refused
    for bad, message in [
        (replace(out, update_id="x1", clients=3), "reduces 3 devices' updates; region 'region-a' stands for at most 2"),
        (replace(out, update_id="x2", env_steps=10**7), "env_steps 10000000 outside 1..2048"),
    ]:
        with pytest.raises(Rejected, match=message):
            h.root.submit("region-a", signed(bad))
    assert h.root.submit("region-a", out).round == 1


def test_a_device_cannot_claim_to_be_a_region_and_a_region_needs_a_hierarchy(tmp_path, hierarchy_config, tiny_config):
    # Prepare: a device of the root itself (one that failed over to it)
    h = Hierarchy(tmp_path, hierarchy_config)
    h.root.add_client("dev-x")
    h.sync()
    for name in ("dev-x", "region-a", "region-b"):
        h.root.heartbeat(name, 0)
    task = h.root.task("dev-x")
    assert isinstance(task, Wait)  # the root's places are the regions'

    # Execute and assert: a bare delta claiming several devices is refused, as is a region under a flat experiment
    delta = np.zeros(h.setup.net.spec.dim, np.float32)
    with pytest.raises(Rejected, match="has no task in round 1"):
        h.root.submit("dev-x", signed(Submission("u1", "dev-x", 1, 0, delta, 100, clients=2)))
    flat = open_root(parse_config(tiny_config), tmp_path / "flat")
    flat.add_client("region-z", devices=3)
    flat.heartbeat("region-z", 0)
    with pytest.raises(Rejected, match="is a regional aggregator, and this experiment is not a hierarchy"):
        flat.task("region-z")


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged-forward-file"])
def test_a_region_killed_while_forwarding_forwards_the_same_update_once(tmp_path, hierarchy_config, damaged):
    # Prepare: region a reduced round 1 and pushed it, but was killed before it heard the ack
    h = Hierarchy(tmp_path, hierarchy_config)
    h.sync()
    h.devices_train(1, only={0, 1})
    h.regions["a"].tick()
    first = h.regions["a"].outbox()
    h.root.submit("region-a", first)
    h.regions["a"]._store.close()  # kill -9: nothing more is written
    if damaged:  # the saved update is unreadable: the stored updates are reduced again, to the same bytes
        (tmp_path / "region-a" / "forward.safetensors").write_bytes(b"not a safetensors file")

    # Execute: the region restarts from its state directory
    config = h.regions["a"].config
    region = RegionCoordinator(config, type(h.regions["a"]._store)(tmp_path / "region-a"), "region-a")
    assert region.armed and isinstance(region.task("dev-0"), Wait)  # no update joins a round being forwarded
    region.tick()
    again = region.outbox()
    ack = h.root.submit("region-a", again)

    # Assert: the same bytes (kept on disk), acknowledged as a duplicate; the round then closes here
    assert again.sent_digest == first.sent_digest and ack.duplicate
    assert (tmp_path / "region-a" / "forward.safetensors").exists()
    region.forwarded(ack)
    assert not (tmp_path / "region-a" / "forward.safetensors").exists()
    assert not region.armed and region.status().rounds[-2].closed_at is not None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_round_without_enough_updates_by_the_parents_deadline_is_dropped_and_devices_wait(tmp_path, hierarchy_config):
    # Prepare: region a takes round 1 (the root's deadline is 60 s: the region closes it by 48 s)
    clock = Clock()
    h = Hierarchy(tmp_path, hierarchy_config, clock=clock)
    h.sync()
    region = h.regions["a"]
    assert region.armed and isinstance(region.task("dev-0"), Task)

    # Execute: no update arrives by then
    clock.now += 0.8 * 60 + 1
    region.tick()

    # Assert: the round is closed here, nothing is forwarded, devices wait for the root's next round
    assert not region.armed and region.outbox() is None
    wait = region.task("dev-0")
    assert isinstance(wait, Wait) and wait.reason == "waiting for the parent's next round"


def test_a_newer_version_from_the_parent_ends_the_open_round_and_devices_act_with_it(tmp_path, hierarchy_config):
    h = Hierarchy(tmp_path, hierarchy_config)
    h.sync()
    region = h.regions["a"]
    newer = Model(1, region.model().params + 1.0, 1, None)

    region.mirror(newer)

    assert not region.armed and region.deployed_version == 1
    assert region.model(1).params.tobytes() == newer.params.tobytes() and region.model(0).version == 0
    assert region.heartbeat("dev-0", 0) == 1


def test_devices_hear_the_same_experiment_from_their_region_and_from_the_root(tmp_path, hierarchy_config):
    # a device that registers with the root after failing over must not start afresh
    h = Hierarchy(tmp_path, hierarchy_config)
    h.root.add_client("dev-0")
    assert h.regions["a"].register("dev-0").experiment_yaml == h.root.register("dev-0").experiment_yaml


def test_a_regions_config_names_what_it_cannot_take(tmp_path, hierarchy_config, tiny_config):
    experiment = parse_config(hierarchy_config)
    assert load_region_config(None, [], experiment).updates_per_round == 2  # its share: 4 clients / 2 regions
    assert load_region_config(None, [], experiment).gate.enabled is False
    assert load_region_config(None, [], experiment).min_updates == 1  # what arrived by its deadline is forwarded
    bad = [
        ({"rounds": "fast"}, experiment, "rounds must be a mapping, got str"),
        ({"experiment": {"name": "x"}}, experiment, "experiment: a regional aggregator trains its parent's"),
        ({"gate": {"enabled": True}}, experiment, "a regional aggregator evaluates nothing"),
        ({}, parse_config(tiny_config), "not a hierarchy .experiment.federation.regions: 1."),
        ({"rounds": {"deadline_s": -1}}, experiment, "rounds.deadline_s"),
    ]
    for i, (data, parent, message) in enumerate(bad):
        path = tmp_path / f"region{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=message):
            load_region_config(path, [], parent)


def test_a_region_forwarding_a_round_takes_no_other_and_its_store_keeps_numbers(tmp_path, hierarchy_config):
    h = Hierarchy(tmp_path, hierarchy_config)
    h.sync()
    h.devices_train(1, only={0, 1})
    region = h.regions["a"]
    region.tick()
    assert region.outbox() is not None
    assert not region.arm(Task(2, 0, 60.0)) and region.outbox().round == 1  # its update goes first
    with pytest.raises(ValueError, match="round 1 holds updates"):
        region._store.renumber_open_round(2, 0, 0.0)


def test_a_round_dropped_here_is_not_taken_again_while_the_root_still_offers_it(tmp_path, hierarchy_config):
    # Prepare: region a drops round 1 (nothing by its deadline) while the root keeps it open
    clock = Clock()
    h = Hierarchy(tmp_path, hierarchy_config, clock=clock)
    h.sync()
    clock.now += 0.8 * 60 + 1
    h.regions["a"].tick()

    # Execute: the upstream asks the root again, which offers round 1 again
    h.upstreams["a"].step()

    # Assert: the region waits for the root's next round instead of reopening (or crashing on) round 1
    assert not h.regions["a"].armed and isinstance(h.root.task("region-a"), Task)
    assert not h.regions["a"].arm(h.root.task("region-a"))


def test_a_region_whose_place_in_the_root_round_is_gone_drops_the_round(tmp_path, hierarchy_config):
    # Prepare: region a took round 1; the root then answers it with a wait (it closed round 1 without a
    # new version, or gave the region's place to another client)
    h = Hierarchy(tmp_path, hierarchy_config)
    h.sync()
    h.devices_train(1, only={0})
    upstream = h.upstreams["a"]
    upstream.link.task = lambda: Wait(0.2, "not sampled for round 2")

    # Execute
    upstream.step()

    # Assert: the round is over here too; its update is not forwarded, and its devices wait
    assert not h.regions["a"].armed and h.regions["a"].outbox() is None
    assert isinstance(h.regions["a"].task("dev-1"), Wait)


def test_a_push_answered_later_is_retried_not_dropped(tmp_path, hierarchy_config):
    h = Hierarchy(tmp_path, hierarchy_config)
    h.sync()
    h.devices_train(1, only={0, 1})
    h.regions["a"].tick()
    upstream = h.upstreams["a"]
    real_push = upstream.link.push
    upstream.link.push = lambda s: (_ for _ in ()).throw(Rejected(Reason.RESOURCE_EXHAUSTED, "slow down"))

    upstream.step()

    assert h.regions["a"].outbox() is not None  # kept for the next try
    upstream.link.push = real_push
    upstream.step()
    assert h.regions["a"].outbox() is None and list(h.root._arrived) == ["region-a"]


def test_a_regions_statistics_may_count_each_devices_observations_up_to_the_step_limit(tmp_path, hierarchy_config):
    # a device may claim (and have observed) more steps than the budget its weight is capped at: 4 x 256
    learner = {**hierarchy_config["learner"], "normalize": {"obs": True, "reward": False}}
    h = Hierarchy(tmp_path, {**hierarchy_config, "learner": learner})
    h.sync()
    obs_dim = h.setup.family.obs_dim

    def sent(count: float, update_id: str) -> Submission:
        norm = NormStats(Moments(np.array(count), np.zeros(obs_dim), np.full(obs_dim, count)), None)
        delta = np.zeros(h.setup.net.spec.dim, np.float32)
        return signed(Submission(update_id, "region-a", 1, 0, delta, 512, norm=norm, clients=2))

    with pytest.raises(Rejected, match="norm.obs.count 2049"):
        h.root.submit("region-a", sent(2049.0, "too-many"))
    assert h.root.submit("region-a", sent(1536.0, "region-a.round1")).round == 1


@pytest.mark.parametrize("normalised", [False, True], ids=["plain", "fleet-statistics"])
def test_under_secure_aggregation_regions_sum_their_devices_and_the_root_averages_their_means(
    tmp_path, hierarchy_config, normalised
):
    # Prepare: six devices in two regions, each region's three run the protocol with their region
    # (with the fleet's statistics, each device's travel inside its region's secure sum)
    federation = {**hierarchy_config["federation"], "n_clients": 6}
    pipeline = {"secure_aggregation": {"enabled": True, "threshold": 2}}
    learner = {**hierarchy_config["learner"], "normalize": {"obs": normalised, "reward": normalised}}
    experiment = {**hierarchy_config, "federation": federation, "pipeline": pipeline, "learner": learner}
    h = Hierarchy(tmp_path, {**experiment, "strategy": {"name": "fedavg"}}, ["rounds.secure_step_s=2.0"])
    h.sync()
    dim, before, norm_before = h.setup.net.spec.dim, h.root.model().params.copy(), h.root.model().norm
    rng = np.random.default_rng(0)
    inputs = {i: rng.uniform(-0.05, 0.05, dim).astype(np.float32) for i in range(6)}
    observed = {
        i: NormStats(Moments.of(rng.normal(i, 2.0, (20 * i + 5, 4))), Moments.of(rng.normal(size=(7, 1))))
        for i in range(6)
    }
    config = h.setup.config.pipeline.secure_aggregation

    def take_part(i: int) -> None:
        region = h.region_of(i)
        task = region.task(device(i))
        ask = lambda step, payload: region.secure_step(device(i), task.round, step, payload)  # noqa: E731
        words = to_words(observed[i]) if normalised else None
        run_secure_round(ask, inputs[i], config, lambda s: time.sleep(min(s, 0.02)), lambda *_: None, extra=words)

    # Execute: the devices mask, the regions unmask their sums and forward, the root closes the round
    threads = [threading.Thread(target=take_part, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while any(r.outbox() is None for r in h.regions.values()) and time.monotonic() < deadline:
        for region in h.regions.values():
            region.tick()
        time.sleep(0.02)
    for t in threads:
        t.join(10)
    outboxes = [r.outbox() for r in h.regions.values()]
    h.sync()
    h.root.tick()

    # Assert: each region forwarded its devices' mean (as three step budgets) and nothing else; the
    # root's model moved by the mean of all six, within quantization
    assert [(o.clients, o.env_steps) for o in outboxes] == [(3, 3 * 256)] * 2
    assert h.root.deployed_version == 1
    np.testing.assert_allclose(h.root.model().params - before, np.mean(list(inputs.values()), axis=0), atol=1e-5)
    if not normalised:
        assert [o.norm for o in outboxes] == [None, None]
    else:  # each region forwards its devices' statistics pooled, and the root merges both into the new version's
        for outbox, members in zip(outboxes, h.members.values()):
            pooled = observed[members[0]].merge(observed[members[1]]).merge(observed[members[2]])
            assert outbox.norm.obs.count == pooled.obs.count
            np.testing.assert_allclose(outbox.norm.obs.m2, pooled.obs.m2, rtol=1e-9)
        everyone = sum(float(o.obs.count) for o in observed.values())
        assert h.root.model().norm.obs.count == norm_before.obs.count + everyone
    # a device's update in the clear is refused by its region and by the root, which gives devices no task
    with pytest.raises(Rejected, match="aggregates securely: an update is sent masked"):
        h.regions["a"].submit("dev-0", signed(Submission("x", "dev-0", 2, 1, inputs[0], 256)))
    h.root.add_client("dev-0")
    assert "through its region" in h.root.task("dev-0").reason
    with pytest.raises(Rejected, match="aggregates securely: an update is sent masked"):
        h.root.submit("dev-0", signed(Submission("y", "dev-0", 2, 1, inputs[0], 256)))


def test_a_one_device_region_may_send_the_statistics_of_all_its_device_observed(tmp_path, hierarchy_config):
    # its device claimed (and observed) 512 steps; its weight was capped at the 256-step budget
    learner = {**hierarchy_config["learner"], "normalize": {"obs": True, "reward": False}}
    h = Hierarchy(tmp_path, {**hierarchy_config, "learner": learner})
    h.sync()
    dim, obs_dim = h.setup.net.spec.dim, h.setup.family.obs_dim
    norm = NormStats(Moments(np.array(512.0), np.zeros(obs_dim), np.full(obs_dim, 512.0)), None)
    one = signed(Submission("region-a.round1", "region-a", 1, 0, np.zeros(dim, np.float32), 256, norm=norm))

    assert h.root.submit("region-a", one).round == 1


def test_a_secure_hierarchys_root_keeps_its_places_for_regions(tmp_path, hierarchy_config):
    pipeline = {"secure_aggregation": {"enabled": True, "threshold": 2}}
    h = Hierarchy(tmp_path, {**hierarchy_config, "pipeline": pipeline, "strategy": {"name": "fedavg"}})
    h.root.add_client("dev-x")
    h.root._seen.pop("region-b")  # region b is not online yet
    h.root.heartbeat("dev-x", 0)
    h.root._sample()

    assert h.root._selected == {"region-a"}
    h.root.heartbeat("region-b", 0)
    assert isinstance(h.root.task("region-b"), Task)  # the place a device would have taken is still there
    assert isinstance(h.root.task("dev-x"), Wait)


def test_a_secure_region_round_no_device_joins_is_dropped_by_the_parents_deadline(tmp_path, hierarchy_config):
    clock = Clock()
    pipeline = {"secure_aggregation": {"enabled": True, "threshold": 2}}
    experiment = {**hierarchy_config, "pipeline": pipeline, "strategy": {"name": "fedavg"}}
    h = Hierarchy(tmp_path, experiment, clock=clock)
    h.sync()
    assert h.regions["a"].armed

    clock.now += 0.8 * 60 + 1
    h.regions["a"].tick()

    assert not h.regions["a"].armed and h.regions["a"].outbox() is None


def test_the_root_closes_a_round_with_what_its_regions_forwarded_by_its_deadline(tmp_path, hierarchy_config):
    # Prepare: region b forwards round 1; region a drops it (nothing arrived by its deadline)
    clock = Clock()
    h = Hierarchy(tmp_path, hierarchy_config, clock=clock)
    h.sync()
    h.devices_train(1, only={2, 3})
    h.regions["b"].tick()
    h.upstreams["b"].step()
    clock.now += 0.8 * 60 + 1
    h.regions["a"].tick()
    h.upstreams["a"].step()  # offered round 1 again, it takes nothing

    # Execute: the root's deadline passes
    clock.now += 60
    h.root.tick()

    # Assert: it closed with region b's update alone (min_updates 1 at the root of a hierarchy)
    assert h.root.config.min_updates == 1 and h.root.deployed_version == 1


def test_a_region_notes_when_its_parents_run_finished(tmp_path, hierarchy_config):
    h = Hierarchy(tmp_path, hierarchy_config)
    region = h.regions["a"]
    region.finish()

    region.tick()

    assert region._store.meta("finished_at") is not None and region.task("dev-0").finished


def test_a_regions_health_says_when_its_parent_last_answered(tmp_path, hierarchy_config):
    h = Hierarchy(tmp_path, hierarchy_config)
    upstream = Upstream(h.upstreams["a"].link, h.regions["a"], threading.Event())
    liveness = Liveness(h.regions["a"], upstream.facts)
    assert liveness()[1]["parent_heard_s_ago"] is None

    thread = threading.Thread(target=upstream.run, daemon=True)
    thread.start()
    assert eventually(lambda: liveness()[1]["parent_heard_s_ago"] is not None)
    healthy, facts = liveness()
    upstream._stop.set()
    thread.join(5)
    assert healthy and facts["parent_heard_s_ago"] < 5 and facts["deployed_version"] == 0


def eventually(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False
