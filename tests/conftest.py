import logging

import pytest
import yaml


@pytest.fixture(autouse=True)
def _fedrl_logger_restored():
    """Put the ``fedrl`` logger back after each test: a command run in-process (``setup_logging``)
    leaves it writing to that test's captured stream, which is closed by the time a later test's
    background thread logs (a "Logging error" line in the output)."""
    fedrl = logging.getLogger("fedrl")
    saved = fedrl.handlers[:], fedrl.level, fedrl.propagate
    yield
    fedrl.handlers, fedrl.level, fedrl.propagate = saved


@pytest.fixture
def tiny_config():
    """A few-second federated CartPole run: 3 clients, 3 rounds."""
    return {
        "name": "tiny",
        "seed": 3,
        "env": {"family": "cartpole", "heterogeneity": 1.0},
        "learner": {"name": "ppo", "n_envs": 4, "n_steps": 32, "lr": 0.0025, "hidden": [32, 32]},
        "federation": {"n_clients": 3, "rounds": 3, "local_steps": 256, "stop_at_target": False},
        "eval": {"episodes": 2, "heldout_clients": 2},
    }


@pytest.fixture
def config_file(tmp_path, tiny_config):
    """``tiny_config`` written as a YAML file."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path
