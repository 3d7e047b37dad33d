"""The edge agent's loop, driven through a test double of the transport (the ``Link``).

The double answers from a script and records every call; it can be made unreachable or made to
refuse a call. Training, the pending file, the acting policy and the threads are all real.
"""

import hashlib
import json
import logging
import threading
import time

import numpy as np
import pytest
import yaml

from fedrl.edge.agent import Agent, AgentConfig, Fatal
from fedrl.edge.backoff import BackoffConfig
from fedrl.edge.device_env import DeviceEnvSpec
from fedrl.edge.failover import FailoverLink
from fedrl.edge.link import Unreachable
from fedrl.edge.trainer import trainer_from_yaml
from fedrl.wire.pending import PendingStore, new_submission
from fedrl.wire.records import Ack, Model, Reason, Registration, Rejected, Task, Wait

FAST = BackoffConfig(initial_s=0.001, factor=2.0, cap_s=0.01)
FOREVER = 10**9


class ScriptedLink:
    """A transport double: scripted answers, a record of calls, calls that fail on demand."""

    def __init__(self, experiment, models, tasks=(), deployed=0, heartbeat_s=0.02):
        self.experiment, self.models, self.deployed, self.heartbeat_s = experiment, models, deployed, heartbeat_s
        self.tasks = list(tasks)  # answers to task(), in order; then Wait(finished) or, with waiting, Wait
        self.waiting = False  # when the script is spent: keep answering Wait instead of finishing
        self.unreachable = {}  # call name -> how many more times it fails as Unreachable
        self.refuse = {}  # call name -> the Rejected it raises
        self.calls, self.pushed, self.heartbeats = [], [], []
        self._lock = threading.Lock()

    def _answer(self, name):
        with self._lock:
            self.calls.append(name)
            if self.unreachable.get(name, 0) > 0:
                self.unreachable[name] -= 1
                raise Unreachable(f"{name}: UNAVAILABLE: connection refused")
            if name in self.refuse:
                raise self.refuse[name]

    def register(self):
        self._answer("register")
        return Registration("dev-1", self.experiment, self.deployed, self.heartbeat_s)

    def heartbeat(self, acting_version):
        self._answer("heartbeat")
        self.heartbeats.append(acting_version)
        return self.deployed

    def task(self):
        self._answer("task")
        if self.tasks:
            return self.tasks.pop(0)
        return Wait(0.01, "nothing to do", finished=not self.waiting)

    def pull(self, version):
        self._answer("pull")
        return Model(version, self.models[version], version, None)

    def push(self, submission):
        self._answer("push")
        self.pushed.append(submission)
        return Ack(submission.update_id, submission.round, time.time())

    def close(self):
        pass


def eventually(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


class Running:
    """An agent's ``run`` in a thread, as a device's main loop would be."""

    def __init__(self, agent):
        self.agent, self.error = agent, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.agent.run()
        except Exception as exc:  # handed to the test
            self.error = exc

    def stop(self):
        self.agent.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


def agent(link, state_dir, **config):
    """An agent with fast backoff that returns when the run is finished (unless told otherwise),
    acting at 1 kHz: an unpaced simulated env would hold the GIL and starve its training thread."""
    settings = {"until_finished": True, "act_period_s": 0.001, **config}
    return Agent(link, AgentConfig(state_dir, 0, backoff=FAST, jitter_seed=0, **settings))


class Recorded(logging.Handler):
    """The agent's log records, caught at its own logger (whatever else configured logging)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def events(self, name):
        return [r for r in self.records if r.getMessage() == name]


def test_the_agent_rides_out_an_unreachable_server_then_trains_pushes_and_finishes(
    experiment, params, tmp_path, edge_log
):
    link = ScriptedLink(experiment, {0: params}, tasks=[Task(1, 0, 60.0)])
    link.unreachable = {"register": 5, "task": 2, "pull": 1, "push": 3}

    agent(link, tmp_path).run()  # returns: the server said the run is finished

    assert len(link.pushed) == 1 and link.pushed[0].round == 1 and link.pushed[0].base_version == 0
    assert np.isfinite(link.pushed[0].delta).all() and link.pushed[0].delta.shape == params.shape
    assert not PendingStore(tmp_path).path.exists()
    waits = edge_log.events("unreachable")
    assert [w.fields["call"] for w in waits] == ["register"] * 5 + ["pull"] + ["task"] * 2 + ["push"] * 3
    assert [w.fields["attempt"] for w in waits[:5]] == [1, 2, 3, 4, 5]  # the count restarts after an answer
    assert waits[5].fields["attempt"] == 1 and all(0 <= w.fields["retry_in_s"] <= FAST.cap_s for w in waits)
    assert edge_log.events("finished")


def test_the_update_is_on_disk_before_the_push_and_is_pushed_first_after_a_restart(experiment, params, tmp_path):
    down = ScriptedLink(experiment, {0: params}, tasks=[Task(1, 0, 60.0)])
    down.unreachable = {"push": FOREVER}
    first = Running(agent(down, tmp_path))
    eventually(lambda: down.calls.count("push") >= 3)
    first.stop()  # the device goes away while the server is unreachable
    pending = PendingStore(tmp_path).load()
    assert pending is not None and pending.round == 1

    up = ScriptedLink(experiment, {0: params})
    agent(up, tmp_path).run()

    assert up.calls[:2] == ["register", "push"]
    assert up.pushed[0].update_id == pending.update_id
    assert up.pushed[0].delta.tobytes() == pending.delta.tobytes()
    assert not PendingStore(tmp_path).path.exists()


def test_with_a_pipeline_the_agent_pushes_the_payload_and_keeps_the_residual_on_the_device(experiment, tmp_path):
    data = yaml.safe_load(experiment)
    data["pipeline"] = {"compression": {"sparsify": "randomk", "ratio": 0.1, "bits": 4, "error_feedback": True}}
    experiment = yaml.safe_dump(data)
    trainer = trainer_from_yaml(experiment, 0)
    params = trainer.setup.initial_params()
    link = ScriptedLink(experiment, {0: params}, tasks=[Task(1, 0, 60.0)])

    agent(link, tmp_path).run()

    (pushed,) = link.pushed
    assert pushed.delta is None and len(pushed.payload) < params.nbytes / 20
    assert pushed.digest == hashlib.sha256(pushed.payload).hexdigest()
    residual = trainer.restore(tmp_path).pipeline.residual
    assert residual.shape == (1, params.size) and np.abs(residual).max() > 0


def test_an_update_the_server_refuses_is_dropped_and_the_agent_goes_on(experiment, params, tmp_path, edge_log):
    PendingStore(tmp_path).save(new_submission("dev-1", 1, 0, np.zeros_like(params), 10, {}))
    link = ScriptedLink(experiment, {0: params})
    link.refuse["push"] = Rejected(Reason.FAILED_PRECONDITION, "round 1 is closed")

    agent(link, tmp_path).run()

    assert not PendingStore(tmp_path).path.exists()
    assert edge_log.events("update_dropped")[0].fields["message"] == "round 1 is closed"
    assert "task" in link.calls


def _greedy_towards(trainer, params, action):
    """``params`` with the last actor bias set so the greedy action is ``action`` everywhere."""
    spec = trainer.setup.net.spec
    out = params.copy()
    i = spec.names.index("actor.2.bias")
    bias = np.full(spec.sizes[i], -10.0, np.float32)
    bias[action] = 10.0
    out[spec.offsets[i] : spec.offsets[i] + spec.sizes[i]] = bias
    return out


def test_a_new_deployed_version_replaces_the_acting_policy_between_two_decisions(experiment, trainer, params, tmp_path):
    models = {1: _greedy_towards(trainer, params, 0), 2: _greedy_towards(trainer, params, 1)}
    link = ScriptedLink(experiment, models, deployed=1)
    link.waiting = True
    running = Running(agent(link, tmp_path))
    eventually(lambda: running.agent.acting.version == 1)
    obs = np.zeros(4, np.float32)
    before = running.agent.acting.act(obs)

    link.deployed = 2
    eventually(lambda: running.agent.acting.act(obs).version == 2)
    after = running.agent.acting.act(obs)

    assert (int(before.action), before.version) == (0, 1)
    assert (int(after.action), after.version) == (1, 2)
    assert running.thread.is_alive() and link.calls.count("register") == 1  # no restart
    assert json.loads((tmp_path / "acting.json").read_text())["version"] == 2
    eventually(lambda: 2 in link.heartbeats)  # the server hears which version acts
    running.stop()

    # A reboot with the server gone: the device acts with version 2 again before reaching it.
    link.unreachable = {"register": FOREVER}
    rebooted = Running(agent(link, tmp_path))
    eventually(lambda: link.calls.count("register") >= 2)
    assert rebooted.agent.acting.act(obs) == after
    rebooted.stop()


def test_a_refused_token_fails_loudly_instead_of_retrying(experiment, tmp_path):
    link = ScriptedLink(experiment, {})
    link.refuse["register"] = Rejected(
        Reason.UNAUTHENTICATED, "unknown token: add the client with `fedrl fleet add-client NAME`"
    )

    with pytest.raises(Fatal, match="UNAUTHENTICATED.*unknown token.*check the token"):
        agent(link, tmp_path).run()
    assert link.calls == ["register"]


def test_a_token_revoked_mid_run_stops_the_agent_with_the_reason(experiment, params, tmp_path):
    link = ScriptedLink(experiment, {0: params})
    link.waiting = True
    running = Running(agent(link, tmp_path))
    eventually(lambda: len(link.heartbeats) >= 2)

    link.refuse["heartbeat"] = Rejected(Reason.PERMISSION_DENIED, "client dev-1 was removed")

    running.thread.join(10)
    assert isinstance(running.error, Fatal) and "client dev-1 was removed" in str(running.error)


@pytest.mark.parametrize("earlier_run", [False, True])
def test_an_experiment_of_another_environment_is_refused(experiment, params, tmp_path, earlier_run):
    if earlier_run:  # the same experiment's state is on disk already
        agent(ScriptedLink(experiment, {0: params}), tmp_path).run()
    with pytest.raises(Fatal, match="runs env 'pendulum' but the server's experiment trains 'cartpole'"):
        agent(ScriptedLink(experiment, {0: params}), tmp_path, env=DeviceEnvSpec("pendulum")).run()


def test_an_environment_with_other_spaces_is_refused_naming_both_sides(experiment, params, tmp_path):
    with pytest.raises(
        Fatal,
        match=r"--env Pendulum-v1: the experiment trains obs \(4,\), 2 discrete actions; this device's environment "
        r"has obs \(3,\), 1 continuous action in \[-2, 2\]",
    ):
        agent(ScriptedLink(experiment, {0: params}), tmp_path, env=DeviceEnvSpec("Pendulum-v1")).run()


def test_the_device_learns_from_what_it_did_while_acting_and_acts_on_after_the_run(experiment, params, tmp_path):
    link = ScriptedLink(experiment, {0: params, 1: params + 0.01}, tasks=[Task(1, 0, 60.0)])
    running = Running(agent(link, tmp_path, until_finished=False))
    eventually(lambda: len(link.pushed) == 1)
    (pushed,) = link.pushed
    actor = running.agent.actor

    assert pushed.env_steps == 128 and actor.steps >= 128  # the round's budget, taken from the acting loop
    eventually(lambda: "task" in link.calls[link.calls.index("push") :])  # the server said: finished
    steps_at_end = actor.steps
    eventually(lambda: actor.steps > steps_at_end + 1000)  # it keeps acting after the run ...
    link.deployed = 1
    eventually(lambda: running.agent.acting.version == 1)  # ... and follows a version deployed later
    assert running.thread.is_alive() and running.error is None
    assert actor.latency_us()["p99"] < 5_000
    running.stop()
    running.thread.join(10)
    assert (tmp_path / "experience.safetensors").exists()


def test_a_device_runs_its_own_environment_from_a_factory_in_its_folder(tiny_config, tmp_path):
    (tmp_path / "my_device.py").write_text(
        "import gymnasium\n\ndef make_env(length=0.5):\n    return gymnasium.make('CartPole-v1')\n"
    )
    config = {**tiny_config, "env": {"family": "device", "device": {"obs_dim": 4, "discrete": 2}}}
    config["federation"] = {**config["federation"], "local_steps": 64}
    experiment = yaml.safe_dump(config)
    params = trainer_from_yaml(experiment, 0).setup.initial_params()
    link = ScriptedLink(experiment, {0: params}, tasks=[Task(1, 0, 60.0)])
    spec = DeviceEnvSpec("my_device:make_env", {"length": 0.4}, tmp_path)

    agent(link, tmp_path / "state", env=spec).run()

    assert link.pushed[0].env_steps == 64 and np.isfinite(link.pushed[0].delta).all()


def test_a_device_experiment_without_a_device_environment_is_refused(tiny_config, tmp_path):
    config = {**tiny_config, "env": {"family": "device", "device": {"obs_dim": 4, "discrete": 2}}}
    with pytest.raises(Fatal, match="this device must bring its own environment"):
        agent(ScriptedLink(yaml.safe_dump(config), {}), tmp_path).run()


def test_a_client_index_outside_the_servers_experiment_is_refused(experiment, tmp_path):
    link = ScriptedLink(experiment, {})
    with pytest.raises(Fatal, match="client index 7 is not in this experiment"):
        Agent(link, AgentConfig(tmp_path, 7, backoff=FAST)).run()


def test_one_state_dir_serves_one_agent_at_a_time(experiment, tmp_path):
    link = ScriptedLink(experiment, {})
    link.unreachable = {"register": FOREVER}
    running = Running(agent(link, tmp_path))
    eventually(lambda: link.calls)

    with pytest.raises(Fatal, match="in use by another agent"):
        agent(ScriptedLink(experiment, {}), tmp_path).run()
    running.stop()


def test_a_finished_run_leaves_the_device_acting_with_the_final_deployed_version(experiment, params, tmp_path):
    class PromotingLink(ScriptedLink):
        def push(self, submission):
            ack = super().push(submission)
            self.deployed = 1  # the round closes and its candidate is deployed
            return ack

    link = PromotingLink(experiment, {0: params, 1: params + 0.01}, tasks=[Task(1, 0, 60.0)], heartbeat_s=60.0)
    running = agent(link, tmp_path)

    running.run()

    assert running.acting.version == 1
    assert json.loads((tmp_path / "acting.json").read_text())["version"] == 1


@pytest.mark.parametrize("gone", ["heartbeat", "pull"])
def test_a_finished_run_ends_the_agent_even_when_the_server_is_gone_right_after(experiment, params, tmp_path, gone):
    class ExitingLink(ScriptedLink):
        def task(self):
            self.deployed = 1  # the last round's candidate is deployed, then the server exits
            self.unreachable = {gone: FOREVER}
            self.calls.clear()
            return Wait(0.01, "the run is finished", finished=True)

    link = ExitingLink(experiment, {0: params, 1: params}, heartbeat_s=60.0)
    running = Running(agent(link, tmp_path))

    running.thread.join(20)

    assert not running.thread.is_alive() and running.error is None
    assert link.calls[-1] == gone and link.calls.count(gone) == 1  # tried once, not forever
    assert running.agent.acting.version == 0


def test_a_device_of_a_hierarchy_trains_once_a_round_and_a_device_of_one_server_may_train_again(
    experiment, params, tmp_path, edge_log
):
    # a region acknowledged round 1, died, and the device's fallback offers round 1 again
    tasks = [Task(1, 0, 60.0), Task(1, 0, 60.0), Task(2, 0, 60.0)]
    link = ScriptedLink(experiment, {0: params}, tasks=list(tasks))

    agent(FailoverLink([link]), tmp_path / "hierarchy").run()

    assert [s.round for s in link.pushed] == [1, 2]
    assert [e.fields["round"] for e in edge_log.events("task_skipped")] == [1]

    # one server offers a round again only when it may take a new update (it refused the first)
    alone = ScriptedLink(experiment, {0: params}, tasks=list(tasks))
    agent(alone, tmp_path / "alone").run()
    assert [s.round for s in alone.pushed] == [1, 1, 2]


def test_the_once_a_round_rule_survives_a_restart_and_a_new_run_starts_it_over(experiment, params, tmp_path):
    # Prepare: the device (of a hierarchy) trained for round 3 from version 2, then restarted
    first = ScriptedLink(experiment, {2: params}, tasks=[Task(3, 2, 60.0)], deployed=2)
    agent(FailoverLink([first]), tmp_path).run()

    # Execute and assert: round 3 offered again after the restart is skipped, round 4 is trained
    again = ScriptedLink(experiment, {2: params}, tasks=[Task(3, 2, 60.0), Task(4, 2, 60.0)], deployed=2)
    agent(FailoverLink([again]), tmp_path).run()
    assert [s.round for s in again.pushed] == [4]
    sent = json.loads((tmp_path / "sent.json").read_text())
    assert {k: sent[k] for k in ("round", "base_version", "server")} == {"round": 4, "base_version": 2, "server": 0}

    # a new run of the same experiment offering the same round from its own version 2 is trained as usual
    fresh = ScriptedLink(experiment, {2: params + 0.5}, tasks=[Task(4, 2, 60.0)], deployed=2)
    agent(FailoverLink([fresh]), tmp_path).run()
    assert [s.round for s in fresh.pushed] == [4]


def test_a_pending_update_goes_after_a_restart_to_the_server_whose_task_it_was(experiment, params, tmp_path):
    # Prepare: the device took round 1's task from its fallback (server 2), which was gone before it answered
    region, root = (
        ScriptedLink(experiment, {0: params}),
        ScriptedLink(experiment, {0: params}, tasks=[Task(1, 0, 60.0)]),
    )
    region.unreachable = {"register": 1, "heartbeat": FOREVER}
    root.unreachable = {"push": FOREVER}
    first = Running(agent(FailoverLink([region, root], return_after_s=3600.0), tmp_path))
    eventually(lambda: root.calls.count("push") >= 2)
    first.stop()

    # Execute: it restarts with both servers up
    region2, root2 = ScriptedLink(experiment, {0: params}), ScriptedLink(experiment, {0: params})
    agent(FailoverLink([region2, root2], return_after_s=3600.0), tmp_path).run()

    # Assert: the update went to the server that gave its task, not to the device's region
    assert [s.round for s in root2.pushed] == [1] and region2.pushed == []
