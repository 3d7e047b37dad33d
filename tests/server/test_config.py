"""The server's config file: its mistakes are named like an experiment's, with the section path."""

import pytest

from fedrl.experiment.config import ConfigError
from fedrl.server.config import load_server_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("experiment.learner.lrr=1", "bad config: unknown key 'experiment.learner.lrr' under 'experiment.learner'; "),
        ("experiment.strategy.name=fedavgg", "bad config: unknown strategy 'fedavgg' (experiment.strategy); did you"),
        ("rounds.deadlin_s=3", "bad config: unknown key 'rounds.deadlin_s' under 'rounds'; did you mean 'deadline_s'?"),
        ("limitz.x=1", "bad config: unknown key 'limitz'; did you mean 'limits'? allowed: experiment, rounds, gate"),
        ("gate.episodes=x", "bad config: gate.episodes = 'x': should be a valid integer"),
    ],
)
def test_a_server_config_mistake_names_its_full_key_and_the_nearest_valid_name(override, message):
    with pytest.raises(ConfigError) as err:
        load_server_config(None, [override])

    assert str(err.value).startswith(message)
