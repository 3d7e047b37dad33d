"""Learning from recorded experience: time-outs and breaks in the record are bootstrapped, terminal
states are not, and REINFORCE learns (and reports) only the steps of finished episodes."""

import numpy as np
import pytest
import torch

from fedrl.agents import init_client_state, make_task
from fedrl.agents.experience import rollout_of, train_from_experience
from fedrl.core.experience import Experience
from fedrl.experiment.loading import load_config
from fedrl.experiment.setup import Setup


def _experience(terminated, truncated, gap_after=None):
    n = len(terminated)
    obs = np.arange(n * 4, dtype=np.float32).reshape(n, 4) / 100
    next_obs = np.roll(obs, -1, axis=0)
    next_obs[-1] = obs[-1] + 0.5
    if gap_after is not None:
        next_obs[gap_after] += 1.0  # the record does not go on from where this step ended
    return Experience(
        obs, np.zeros(n, np.int64), np.ones(n, np.float32), np.array(terminated), np.array(truncated), next_obs
    )


@pytest.fixture
def task():
    setup = Setup(load_config(None, ["learner.hidden=[8]"]))
    params = setup.initial_params()
    state = init_client_state(setup.config.learner, setup.net, 1, False)
    return setup, make_task(setup.net, setup.family, setup.env_params[[0]], None, params, 0.0,
                            np.random.default_rng(0), client_state=state)  # fmt: skip


def test_time_outs_and_breaks_are_bootstrapped_and_terminal_states_are_not(task):
    setup, local = task
    flat = local.anchor[None]
    exp = _experience([False, True, False, False, False], [True, True, False, False, False], gap_after=2)

    rollout = rollout_of(local, flat, exp, gamma=0.9)

    value = setup.net.value(setup.net.unpack(flat), torch.from_numpy(exp.next_obs)[None])[0]
    rewards = rollout.rewards[:, 0, 0]
    assert rewards[0] == pytest.approx(1.0 + 0.9 * float(value[0]))  # a time-out: bootstrapped
    assert rewards[1] == pytest.approx(1.0)  # terminated (and truncated): no value after a terminal state
    assert rewards[2] == pytest.approx(1.0 + 0.9 * float(value[2]))  # a break in the record: bootstrapped
    assert rollout.dones[:, 0, 0].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert float(rollout.last_value[0, 0]) == pytest.approx(float(value[4]))


def test_reinforce_learns_and_reports_only_the_steps_of_finished_episodes(task):
    _, local = task
    config = load_config(None, ["learner.name=reinforce", "learner.hidden=[8]"]).learner

    ended = train_from_experience(config, local, _experience([False, False, True, False, False], [False] * 5))
    unfinished = train_from_experience(config, local, _experience([False] * 5, [False] * 5))

    assert ended.env_steps[0] == 3 and np.abs(ended.params - local.anchor.numpy()).max() > 0
    assert unfinished.env_steps[0] == 0 and np.array_equal(unfinished.params[0], local.anchor.numpy())
