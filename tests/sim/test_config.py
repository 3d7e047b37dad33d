from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"strategy": {"name": "fedavgg"}},
            "bad config: unknown strategy 'fedavgg'; did you mean 'fedavg'? allowed: fedavg, fedavgm, fedadagrad, "
            "fedadam, fedyogi, scaffold, fedasync, fedbuff",
        ),
        ({"learner": {"name": "ppp"}}, "bad config: unknown learner 'ppp'; did you mean 'ppo'? allowed: ppo, "),
        (
            {"learner": {"name": "ppo", "lrr": 0.1}},
            "bad config: unknown key 'learner.lrr' under 'learner'; did you mean 'lr'? ",
        ),
        ({"federatoin": {}}, "bad config: unknown key 'federatoin'; did you mean 'federation'? allowed: name, "),
        (
            {"env": {"family": "cartpol"}},
            "bad config: env.family = 'cartpol': unknown family; did you mean 'cartpole'? ",
        ),
        (
            {"strategy": {"robust": {"rule": "medain"}}},
            "bad config: strategy.robust.rule = 'medain': unknown rule; did you mean 'median'? "
            "allowed: mean, median, trimmed_mean",
        ),
        ({"seed": "x"}, "bad config: seed = 'x': should be a valid integer"),
        (
            {"federation": {"n_clients": 2, "fraction": 0}},
            "bad config: federation.fraction = 0: should be greater than 0",
        ),
    ],
)
def test_a_misspelt_or_wrong_value_is_named_in_plain_words_with_the_nearest_valid_name(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data)

    assert str(err.value).startswith(message)
    assert not any(internal in str(err.value) for internal in ("Input tag", "Value error", "top level", "Input should"))


def test_a_name_nothing_is_close_to_gets_no_suggestion():
    with pytest.raises(ConfigError) as err:
        parse_config({"strategy": {"name": "zzz"}})

    assert str(err.value).startswith("bad config: unknown strategy 'zzz'; allowed: fedavg")


def test_episodes_replace_the_default_steps_and_an_override_replaces_the_files_budget():
    alone = parse_config({"federation": {"local_episodes": 3}})
    overridden = parse_config(apply_override({"federation": {"local_steps": 512}}, "federation.local_episodes=2"))
    back = parse_config(apply_override({"federation": {"local_episodes": 2}}, "federation.local_steps=256"))

    assert (alone.federation.local_steps, alone.federation.local_episodes) == (None, 3)
    assert (overridden.federation.local_steps, overridden.federation.local_episodes) == (None, 2)
    assert (back.federation.local_steps, back.federation.local_episodes) == (256, None)


def test_a_yaml_error_keeps_its_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nenv:\n  family: cartpole\n   heterogeneity: 1\n")

    with pytest.raises(ConfigError) as err:
        load_config(bad)

    assert str(err.value) == f"config {bad} is not valid YAML: line 4, column 17: mapping values are not allowed here"


def test_a_server_config_given_to_run_is_named_as_one(tmp_path):
    server = tmp_path / "server.yaml"
    server.write_text("experiment: {seed: 1}\nrounds: {deadline_s: 5}\n")

    with pytest.raises(ConfigError, match=r"is a server config .* start it with `fedrl server --config .*server.yaml`"):
        load_config(server)


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


def test_heldout_clients_come_from_the_listed_clients_range_or_the_listed_heldout_ones():
    from fedrl.experiment.setup import Setup

    listed = {"clients": [{"length": 0.2, "masspole": 0.1}, {"length": 0.3, "masspole": 0.3}]}
    fed = {"n_clients": 2}
    within = Setup(parse_config({"env": listed, "federation": fed})).heldout_params(50)
    explicit = Setup(parse_config({"env": {**listed, "heldout": [{"length": 0.9}]}, "federation": fed}))
    names = explicit.family.param_names
    length, masspole, masscart = (names.index(n) for n in ("length", "masspole", "masscart"))

    assert within.shape == (50, len(names))
    assert within[:, length].min() >= 0.2 and within[:, length].max() <= 0.3  # not the family's 0.1-0.9
    assert within[:, masspole].min() >= 0.1 and within[:, masspole].max() <= 0.3
    assert np.all(within[:, masscart] == explicit.family.standard_params[masscart])  # unlisted: standard
    assert explicit.heldout_params(10).tolist() == [
        [0.9 if i == length else v for i, v in enumerate(explicit.family.standard_params)]
    ]
    with pytest.raises(ConfigError, match=r"env.heldout: client 0 sets unknown parameter 'lenght'"):
        parse_config({"env": {"heldout": [{"lenght": 0.9}]}})
