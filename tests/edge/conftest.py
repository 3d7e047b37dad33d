import pytest
import yaml


@pytest.fixture
def trainer(experiment):
    """Client 0 of the experiment."""
    from fedrl.edge.trainer import trainer_from_yaml

    return trainer_from_yaml(experiment, 0)


@pytest.fixture
def params(trainer):
    """The experiment's initial global parameters."""
    return trainer.setup.initial_params()


@pytest.fixture
def edge_log():
    """The agent's log records, caught at its own logger."""
    import logging

    from .test_agent import Recorded

    logger = logging.getLogger("fedrl.edge")
    handler, level = Recorded(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def experiment(tiny_config):
    """The experiment a server would send: tiny federated CartPole, as YAML."""
    config = {**tiny_config, "federation": {**tiny_config["federation"], "local_steps": 128}}
    return yaml.safe_dump(config)


def recorded(trainer, params, steps, seed=0, env=None):
    """``steps`` transitions of client ``trainer.index`` acting (exploring) with ``params`` in its
    simulated environment, recorded as the acting loop records them."""
    import gymnasium as gym
    import numpy as np

    from fedrl.edge.device_env import DeviceEnvSpec, make_env
    from fedrl.edge.recorder import Recorder

    env = env or make_env(DeviceEnvSpec(trainer.setup.config.env.family), trainer.setup, trainer.index)
    policy = trainer.policy(0, params, trainer.fresh_state(), 0.0)
    shape = trainer.setup.net.shape
    action = ((shape.action_dim,), np.float32) if shape.continuous else ((), np.int64)
    recorder = Recorder(steps, shape.obs_dim, *action)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        act, kept = policy.explore(obs, rng, epsilon=0.5)
        next_obs, reward, terminated, truncated, _ = env.step(act)
        recorder.add(obs, kept, reward, terminated, truncated, next_obs, 0)
        obs = env.reset()[0] if terminated or truncated else next_obs
    assert isinstance(env, gym.Env)
    return recorder.take(0)[0]
