"""Any Gymnasium id as a client env family, from the experiment config (``env.family: gym``)."""

from pathlib import Path

import numpy as np
import pytest

from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import load_config, parse_config
from fedrl.sim import run as runs
from fedrl.sim.engine import initial_state, run_rounds
from fedrl.sim.setup import SimSetup

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def gym_config():
    """Three CartPole-v1 clients with their own pole length and masses, two short rounds."""
    return {
        "name": "gym-tiny",
        "seed": 1,
        "env": {
            "family": "gym",
            "heterogeneity": 1.0,
            "gym": {
                "id": "CartPole-v1",
                "setter": "gym_setters:set_cartpole",
                "setter_dir": str(EXAMPLES),
                "params": {
                    "length": {"standard": 0.5, "low": 0.1, "high": 0.9},
                    "masspole": {"standard": 0.1, "low": 0.05, "high": 0.5},
                },
                "time_limit": 100,
            },
        },
        "learner": {"name": "ppo", "n_envs": 2, "n_steps": 16, "hidden": [16, 16]},
        "federation": {"n_clients": 3, "rounds": 2, "local_steps": 64, "stop_at_target": False},
        "eval": {"episodes": 1, "heldout_clients": 0},
    }


def test_two_rounds_through_the_adapter_give_finite_metrics_and_per_client_physics(gym_config):
    setup = SimSetup(parse_config(gym_config))
    results = list(run_rounds(setup, initial_state(setup)))

    assert [r.round for r, _ in results] == [1, 2]
    last, state = results[-1]
    assert last.stats.n_updates == 3 and state.env_steps == 2 * 3 * 64
    assert np.isfinite(last.stats.train_loss) and np.all(np.isfinite(last.client_returns))
    assert setup.family.time_limit == 100 and setup.family.solved_return == 475
    envs = [state.env_state.physics.env[c, 0].env for c in range(3)]
    lengths = [e.length for e in envs]
    np.testing.assert_allclose(lengths, setup.env_params[:, 0])
    assert len(set(lengths)) == 3
    assert [e.polemass_length for e in envs] == pytest.approx([e.masspole * e.length for e in envs])


def test_a_checkpoint_resumes_with_fresh_episodes(tmp_path, gym_config):
    scaled = {**gym_config, "learner": {**gym_config["learner"], "normalize": {"reward": True}}}
    current = runs.start(parse_config(scaled), tmp_path / "run")
    *_, (_, state) = current.rounds()  # run to the end
    assert np.abs(state.client_state.returns).sum() > 0  # episodes under way carry their running returns
    resumed = runs.resume(tmp_path / "run", ["federation.rounds=3"])
    assert resumed.state.round == 2 and np.array_equal(resumed.state.env_state.t, np.zeros((3, 2)))
    np.testing.assert_array_equal(resumed.state.client_state.returns, 0.0)  # fresh episodes: they restart
    assert [r.round for r, _ in resumed.rounds()] == [3]


def test_the_example_config_loads_its_setter_from_beside_it():
    config = load_config(EXAMPLES / "gym_cartpole.yaml")
    assert Path(config.env.gym.setter_dir) == EXAMPLES.resolve()
    assert SimSetup(config).family.param_names == ("length", "masspole", "masscart")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "setter",
            "no_such_module:set_it",
            r"env\.gym\.setter = 'no_such_module:set_it': cannot load setter .*No module named 'no_such_module'",
        ),
        ("setter", "gym_setters:no_such_function", r"env\.gym\.setter = .*cannot load setter"),
        ("setter", "gym_setters.set_cartpole", r"env\.gym\.setter = .*must look like 'package.module:function'"),
        ("id", "NoSuchEnv-v0", r"env\.gym\.id = 'NoSuchEnv-v0': not a registered Gymnasium id"),
    ],
)
def test_a_bad_setter_or_id_is_one_line_naming_the_key(gym_config, key, value, message):
    gym_config["env"]["gym"][key] = value
    with pytest.raises(ConfigError, match=message) as err:
        _family = SimSetup(parse_config(gym_config)).family  # reading a config imports nothing; this does
    assert "\n" not in str(err.value)


def test_family_gym_and_the_gym_section_go_together(gym_config):
    with pytest.raises(ConfigError, match=r"env\.gym: only used with family: gym, not family: cartpole"):
        parse_config({**gym_config, "env": {**gym_config["env"], "family": "cartpole"}})
    with pytest.raises(ConfigError, match=r"env\.gym: required with family: gym"):
        parse_config({"env": {"family": "gym"}})
    with pytest.raises(ConfigError, match=r"env\.gym\.params\.length\.standard = 2\.0: must lie in \[low, high\]"):
        gym_config["env"]["gym"]["params"]["length"]["standard"] = 2.0
        parse_config(gym_config)


def test_unknown_keys_in_the_gym_section_list_the_allowed_ones(gym_config):
    gym_config["env"]["gym"]["setterr"] = "x:y"
    with pytest.raises(ConfigError, match=r"unknown key 'env\.gym\.setterr'.*allowed: id, setter, setter_dir, params"):
        parse_config(gym_config)
