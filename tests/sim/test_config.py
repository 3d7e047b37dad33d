from pathlib import Path

import pytest

from fedrl.experiment.config import ConfigError
from fedrl.experiment.loading import apply_override, load_config, parse_config


def test_defaults_are_a_valid_experiment():
    config = parse_config({})
    assert config.env.family == "cartpole" and config.learner.name == "ppo" and config.strategy.name == "fedavg"


def test_unknown_key_names_the_key_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        parse_config({"learner": {"name": "ppo", "lrr": 0.1}})
    message = str(err.value)
    assert "\n" not in message
    assert "learner" in message and "lrr" in message and "allowed:" in message and "clip_coef" in message


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown key 'federaton'.*allowed: name, seed, env"):
        parse_config({"federaton": {}})


def test_bad_value_names_key_value_and_rule():
    with pytest.raises(ConfigError, match=r"env.heterogeneity = 1.5: .*less than or equal to 1"):
        parse_config({"env": {"heterogeneity": 1.5}})
    with pytest.raises(ConfigError, match=r"env.family = 'cartpol'.*allowed: cartpole"):
        parse_config({"env": {"family": "cartpol"}})
    with pytest.raises(ConfigError, match=r"strategy.*'fedsgd'"):
        parse_config({"strategy": {"name": "fedsgd"}})


def test_budget_and_client_list_consistency():
    with pytest.raises(ConfigError, match="exactly one of local_steps and local_episodes"):
        parse_config({"federation": {"local_steps": 100, "local_episodes": 3}})
    with pytest.raises(ConfigError, match="lists 2 clients but federation.n_clients is 10"):
        parse_config({"env": {"clients": [{"length": 0.2}, {"length": 0.8}]}})


def test_set_overrides_parse_yaml_values_and_nest():
    data = apply_override({"learner": {"lr": 1.0}}, "learner.lr=0.5")
    data = apply_override(data, "learner.hidden=[8, 8]")
    data = apply_override(data, "strategy.robust.rule=median")
    config = parse_config(data)
    assert config.learner.lr == 0.5 and config.learner.hidden == (8, 8) and config.strategy.robust.rule == "median"
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_override({}, "learner.lr")


def test_load_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed)


EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_the_examples_cover_cartpole_pendulum_and_airquality():
    names = {p.name for p in EXAMPLES}
    assert {"cartpole.yaml", "pendulum.yaml", "airquality.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path):
    load_config(path)
