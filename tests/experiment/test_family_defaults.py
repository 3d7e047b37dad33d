"""An environment family's learner defaults: what a config takes where it sets nothing."""

import dataclasses

import pytest
import yaml
from typer.testing import CliRunner

from fedrl.agents import LEARNERS
from fedrl.agents.normalize import NormalizeConfig
from fedrl.cli import app
from fedrl.envs import FAMILIES
from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import parse_config, read_resolved

PATCHED = {"ppo": {"gamma": 0.9, "n_steps": 32, "normalize": {"obs": True, "reward": True}}}


@pytest.fixture
def mountaincar_defaults(monkeypatch):
    """MountainCar with learner defaults of this test's own, whatever the built-in ones are."""
    monkeypatch.setitem(FAMILIES, "mountaincar", dataclasses.replace(FAMILIES["mountaincar"], learner_defaults=PATCHED))


def test_a_family_default_fills_every_key_the_config_leaves_unset(mountaincar_defaults):
    learner = parse_config({"env": {"family": "mountaincar"}}).learner
    assert (learner.gamma, learner.n_steps, learner.normalize.obs, learner.normalize.reward) == (0.9, 32, True, True)
    assert learner.lr == LEARNERS["ppo"].config().lr  # a key the family leaves alone keeps the learner's default


def test_what_the_config_sets_wins_and_a_nested_section_merges_key_by_key(mountaincar_defaults):
    config = parse_config(
        {"env": {"family": "mountaincar"}, "learner": {"gamma": 0.95, "normalize": {"stats": "personal"}}}
    )
    normalize = config.learner.normalize
    assert config.learner.gamma == 0.95 and config.learner.n_steps == 32
    assert (normalize.obs, normalize.reward, normalize.stats) == (True, True, "personal")


def test_defaults_belong_to_one_learner(mountaincar_defaults):
    dqn = parse_config({"env": {"family": "mountaincar"}, "learner": {"name": "dqn"}}).learner
    assert dqn == LEARNERS["dqn"].config()  # PPO's n_steps would not even be a DQN key


def test_another_family_keeps_the_learner_defaults(mountaincar_defaults):
    assert parse_config({"env": {"family": "cartpole"}}).learner == LEARNERS["ppo"].config()


def test_a_written_config_means_the_same_after_the_family_defaults_change(monkeypatch, mountaincar_defaults):
    written = yaml.safe_load(yaml.safe_dump(parse_config({"env": {"family": "mountaincar"}}).model_dump(mode="json")))
    monkeypatch.setitem(
        FAMILIES, "mountaincar", dataclasses.replace(FAMILIES["mountaincar"], learner_defaults={"ppo": {"gamma": 0.5}})
    )
    assert parse_config(written).learner.gamma == 0.9  # a run directory's config sets every key


def test_a_config_written_before_a_key_existed_takes_the_learners_default_not_the_familys(mountaincar_defaults):
    written = parse_config({"env": {"family": "mountaincar"}}).model_dump(mode="json")
    del written["learner"]["normalize"], written["learner"]["n_steps"]  # as an older fedrl wrote it
    old = read_resolved(yaml.safe_dump(written)).learner
    assert old.normalize == NormalizeConfig() and old.n_steps == LEARNERS["ppo"].config().n_steps
    assert old.gamma == 0.9  # what it did write stays


def test_a_family_default_that_does_not_fit_the_run_is_refused_saying_where_it_came_from(mountaincar_defaults):
    dp = {"clip_norm": 1.0, "dp": {"mode": "local", "noise_multiplier": 1.0}}
    hint = "mountaincar's defaults for ppo normalise.*normalize: {obs: false, reward: false}"
    with pytest.raises(ConfigError, match=hint):
        parse_config({"env": {"family": "mountaincar"}, "pipeline": dp})
    off = {"normalize": {"obs": False, "reward": False}}
    assert parse_config({"env": {"family": "mountaincar"}, "learner": off, "pipeline": dp}).learner.gamma == 0.9


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"env": "pendulum"}, "env = 'pendulum': should be a valid dictionary"),
        ({"env": {"family": ["x"]}}, "env.family"),
        ({"env": {"family": "pendulum"}, "learner": {"name": ["x"]}}, "unknown learner"),
        ({"env": {"family": "pendulum"}, "learner": None}, "learner = None"),
    ],
)
def test_a_malformed_section_is_named_not_filled(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_built_in_default_is_a_valid_setting_that_applies(family):
    for name, defaults in FAMILIES[family].learner_defaults.items():
        learner = parse_config({"env": {"family": family}, "learner": {"name": name}}).learner.model_dump()
        for key, value in defaults.items():
            expected = {**learner[key], **value} if isinstance(value, dict) else value
            assert learner[key] == (tuple(expected) if isinstance(expected, list) else expected), (family, name, key)


def test_fedrl_envs_lists_each_family_s_learner_defaults():
    result = CliRunner().invoke(app, ["envs"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for family in FAMILIES.values():
        for name, defaults in family.learner_defaults.items():
            assert f"{name}:" in result.output and all(key in result.output for key in defaults), family.name
