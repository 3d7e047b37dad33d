"""The torch-free inference runtime (``fedrl act``): acts with an exported policy and hot-swaps the
versions a server deploys, in a process that never imports torch, gymnasium or pydantic."""

import json
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from fedrl.edge.device import Fatal
from fedrl.edge.health import HEALTH_FILE, check
from fedrl.edge.inference import Follower
from fedrl.edge.link import Unreachable
from fedrl.experiment.card import policy_card
from fedrl.experiment.loading import load_config
from fedrl.experiment.setup import Setup
from fedrl.policy import load_policy
from fedrl.policy.files import save_npz

FOLLOWER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from fedrl.edge.inference import Follower
    from fedrl.policy import load_policy
    from fedrl.wire.records import Model, Registration

    class Space:
        def __init__(self, shape=(), n=None):
            self.shape, self.n = shape, n

    class Cart:  # a device's own environment, numpy only: a point that should stay near 0
        observation_space, action_space = Space((4,)), Space(n=2)

        def __init__(self):
            self.x, self.stamps = np.zeros(4, np.float32), []

        def reset(self, seed=None):
            self.x[:] = 0.0
            return self.x.copy(), {}

        def step(self, action):
            self.stamps.append(time.perf_counter())
            self.x[0] += 0.01 if action else -0.01
            return self.x.copy(), -abs(float(self.x[0])), False, len(self.stamps) % 200 == 0, {}

        def close(self):
            pass

    class Link:  # the server deploys version 2 after a few heartbeats
        def __init__(self, params):
            self.params, self.beats = params, 0
        def register(self):
            return Registration("dev-1", "unused: the runtime never reads the experiment", 1, 0.01)
        def heartbeat(self, acting):
            self.beats += 1
            return 1 if self.beats < 5 else 2
        def pull(self, version):
            return Model(version, self.params, version, None)
        def close(self):
            pass

    policy = load_policy(sys.argv[1])
    env = Cart()
    follower = Follower(policy, env, sys.argv[2], Link(np.load(sys.argv[3])), 0.01, 0.001, max_steps=600)
    follower.run()
    gaps = np.diff(env.stamps)
    forbidden = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "gymnasium", "pydantic", "yaml"})
    print(json.dumps({"version": follower.acting.version, "steps": len(env.stamps), "max_gap_s": float(gaps.max()),
                      "forbidden": forbidden, "p99_us": follower.actor.latency_us()["p99"]}))
    """
)


class Deploys:
    """A server that has deployed ``model`` (its version) and answers every pull with it."""

    def __init__(self, model):
        self.model = model

    def register(self):
        from fedrl.wire.records import Registration

        return Registration("dev-1", "", self.model.version, 0.01)

    def heartbeat(self, acting):
        return self.model.version

    def pull(self, version):
        return self.model


@pytest.fixture
def artifact(tmp_path):
    setup = Setup(load_config(None, ["learner.hidden=[16,16]"]))
    params = setup.initial_params()
    save_npz(tmp_path / "policy.npz", params, policy_card(setup, params, 1))
    newer = params + np.float32(0.01)
    np.save(tmp_path / "v2.npy", newer)
    return tmp_path / "policy.npz", newer


def test_the_runtime_hot_swaps_a_deployed_version_without_a_missed_step_and_without_torch(artifact, tmp_path):
    # Prepare: an exported version 1, and a server that deploys version 2 while the device acts
    path, newer = artifact

    # Execute: a fresh process, as a device runs `fedrl act`
    result = subprocess.run(
        [sys.executable, "-c", FOLLOWER, str(path), str(tmp_path / "state"), str(tmp_path / "v2.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Assert: version 2 acts, every control step was taken (no pause at the swap), no training stack
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["version"] == 2 and report["steps"] == 600
    assert report["max_gap_s"] < 0.25, report  # 1 ms period; a swap that blocked acting would show here
    assert report["forbidden"] == []
    kept = load_policy(tmp_path / "state")  # a reboot acts with version 2 again
    assert kept.version == 2 and kept.params.tobytes() == newer.tobytes()


def test_an_environment_with_other_spaces_is_refused_naming_both_sides(artifact, tmp_path):
    import gymnasium as gym

    with pytest.raises(Fatal, match=r"the policy takes obs \(4,\), 2 discrete actions; this device's environment has"):
        Follower(load_policy(artifact[0]), gym.make("Pendulum-v1"), tmp_path / "state")


def test_a_deployed_version_that_does_not_fit_the_policy_is_refused_and_acting_goes_on(artifact, tmp_path):
    import gymnasium as gym

    from fedrl.wire.records import Model

    wrong = Deploys(Model(2, np.zeros(5, np.float32), 2, None))
    env = gym.make("CartPole-v1")
    follower = Follower(load_policy(artifact[0]), env, tmp_path / "state", wrong, 0.01, 0.001, max_steps=300)
    follower.run()

    assert follower.acting.version == 1 and follower.actor.steps == 300


def test_a_device_that_cannot_reach_its_server_acts_on_and_beats_healthy(artifact, tmp_path):
    import gymnasium as gym

    class Away:  # every call unanswered
        def register(self):
            raise Unreachable("no route to host")

        heartbeat = pull = register

    state = tmp_path / "state"
    follower = Follower(load_policy(artifact[0]), gym.make("CartPole-v1"), state, Away(), 0.01, 0.001, seed=0)
    runner = threading.Thread(target=follower.run)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (state / HEALTH_FILE).exists():
            time.sleep(0.01)
        healthy, message = check(state)
        record = json.loads((state / HEALTH_FILE).read_text())
    finally:
        follower.stop()
        runner.join()

    assert healthy, message
    assert record["acting"] is True and record["acting_version"] == 1 and record["server_answered_at"] is None


def test_a_deployed_version_brings_its_own_normalisation_statistics(tmp_path):
    import gymnasium as gym

    from fedrl.core.moments import Moments
    from fedrl.core.normstats import NormStats
    from fedrl.wire.records import Model

    # Prepare: an export of a policy that normalises observations, and a version 2 with newer statistics
    setup = Setup(load_config(None, ["learner.hidden=[16,16]", "learner.normalize.obs=true"]))
    params = setup.initial_params()
    rng = np.random.default_rng(0)
    old, new = (NormStats(Moments.of(rng.normal(m, 1 + m, (100, 4))), None) for m in (0.0, 2.0))
    save_npz(tmp_path / "policy.npz", params, policy_card(setup, params, 1, norm=old))

    policy = load_policy(tmp_path / "policy.npz")
    link = Deploys(Model(2, params, 2, None, new))
    follower = Follower(policy, gym.make("CartPole-v1"), tmp_path / "state", link, 0.01, 0.001, max_steps=300)

    # Execute
    follower.run()

    # Assert: version 2 acts with its statistics, and a reboot would too
    acting = follower.acting.current.card.obs_norm
    assert follower.acting.version == 2
    np.testing.assert_allclose(acting.mean, new.obs.mean.astype(np.float32))
    np.testing.assert_allclose(acting.var, new.obs.var.astype(np.float32))
    assert acting.clip == setup.config.learner.normalize.clip_obs
    assert load_policy(tmp_path / "state").card.obs_norm == acting
