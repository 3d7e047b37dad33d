import pytest
import yaml


@pytest.fixture
def experiment(tiny_config):
    """The experiment a server would send: tiny federated CartPole, as YAML."""
    config = {**tiny_config, "federation": {**tiny_config["federation"], "local_steps": 128}}
    return yaml.safe_dump(config)
