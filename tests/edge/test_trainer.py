"""One edge client's local training, from the experiment YAML a server sends."""

import numpy as np
import pytest
import yaml

from fedrl.core.pipeline import PipelineState, client_message
from fedrl.edge.trainer import EdgeTrainer, trainer_from_yaml
from fedrl.experiment.config import ConfigError
from fedrl.experiment.streams import PIPELINE_STREAM


def test_a_cartpole_client_trains_a_finite_delta_of_the_policy_shape(experiment):
    trainer = trainer_from_yaml(experiment, 1)
    params = trainer.setup.initial_params()

    update, state = trainer.train(trainer.fresh_state(), params, round_=1)

    assert update.delta.dtype == np.float32 and update.delta.shape == params.shape
    assert np.isfinite(update.delta).all() and np.abs(update.delta).max() > 0
    assert update.env_steps >= 128
    assert np.isfinite(update.metrics.loss) and update.metrics.episodes >= 1
    assert update.control_delta is None
    assert state.env_state.t.any()  # episodes still running: the next round goes on with them


def test_same_config_client_and_round_give_the_same_delta_bit_for_bit(experiment):
    first, second = trainer_from_yaml(experiment, 2), trainer_from_yaml(experiment, 2)
    params = first.setup.initial_params()

    a, _ = first.train(first.fresh_state(), params, round_=4)
    b, _ = second.train(second.fresh_state(), params, round_=4)
    other_round, _ = first.train(first.fresh_state(), params, round_=5)

    assert a.delta.tobytes() == b.delta.tobytes()
    assert a.delta.tobytes() != other_round.delta.tobytes()


def test_with_a_pipeline_the_update_leaves_as_the_simulated_clients_bytes_and_its_residual_survives_a_restart(
    experiment, tmp_path
):
    data = yaml.safe_load(experiment)
    data["pipeline"] = {"compression": {"sparsify": "topk", "ratio": 0.05, "bits": 8, "error_feedback": True}}
    trainer = trainer_from_yaml(yaml.safe_dump(data), 2)
    setup, params = trainer.setup, trainer.setup.initial_params()
    residual = np.zeros((3, setup.net.spec.dim), np.float32)

    update, state = trainer.train(trainer.fresh_state(), params, round_=1)
    trainer.save_learner(tmp_path, state)
    restored = EdgeTrainer(setup, 2).restore(tmp_path)
    again, _ = trainer.train(restored, params, round_=2)
    unbroken, _ = trainer.train(state._replace(env_state=restored.env_state), params, round_=2)  # episodes restart

    simulated = client_message(
        setup.config.pipeline, update.delta, residual[2], setup.rng(PIPELINE_STREAM, 1, 2), setup.net.spec.sizes
    )
    assert update.payload == simulated.payload and len(update.payload) < update.delta.nbytes / 10
    np.testing.assert_array_equal(restored.pipeline.residual[0], simulated.residual)
    assert np.abs(simulated.residual).max() > 0 and again.payload == unbroken.payload


def test_without_a_pipeline_the_delta_travels_as_it_is(experiment):
    trainer = trainer_from_yaml(experiment, 0)

    update, state = trainer.train(trainer.fresh_state(), trainer.setup.initial_params(), round_=1)

    assert update.payload is None and state.pipeline == PipelineState()


def test_a_client_index_outside_the_experiment_is_a_clear_error(experiment):
    with pytest.raises(ConfigError, match=r"client index 3 is not in this experiment: its clients are 0\.\.2"):
        trainer_from_yaml(experiment, 3)


def test_an_unusable_experiment_is_a_one_line_config_error(experiment):
    data = yaml.safe_load(experiment)
    data["env"]["family"] = "nosuchenv"
    with pytest.raises(ConfigError, match="env.family"):
        trainer_from_yaml(yaml.safe_dump(data), 0)
    with pytest.raises(ConfigError, match="mapping"):
        trainer_from_yaml("- a list", 0)


def test_scaffold_sends_a_control_delta_and_keeps_its_c_i_across_a_restart(experiment, tmp_path):
    data = yaml.safe_load(experiment)
    data["strategy"] = {"name": "scaffold"}
    trainer = trainer_from_yaml(yaml.safe_dump(data), 0)
    params = trainer.setup.initial_params()
    control = np.full_like(params, 0.01)

    update, state = trainer.train(trainer.fresh_state(), params, 1, server_control=control)
    trainer.save_learner(tmp_path, state)
    restored = EdgeTrainer(trainer.setup, 0).restore(tmp_path)

    assert update.control_delta.shape == params.shape and np.abs(update.control_delta).max() > 0
    np.testing.assert_array_equal(restored.learner.control, state.learner.control)
    assert not np.array_equal(restored.learner.control, trainer.fresh_state().learner.control)


def test_learner_state_of_another_client_or_network_is_not_taken_up(experiment, tmp_path):
    data = yaml.safe_load(experiment)
    data["strategy"] = {"name": "scaffold"}
    trainer = trainer_from_yaml(yaml.safe_dump(data), 0)
    _, state = trainer.train(
        trainer.fresh_state(),
        trainer.setup.initial_params(),
        1,
        server_control=np.zeros(trainer.setup.net.spec.dim, np.float32),
    )
    trainer.save_learner(tmp_path, state)

    other_client = trainer_from_yaml(yaml.safe_dump(data), 1).restore(tmp_path)
    data["learner"]["hidden"] = [16]
    other_net = trainer_from_yaml(yaml.safe_dump(data), 0).restore(tmp_path)

    assert not other_client.learner.control.any()
    assert not other_net.learner.control.any()


def test_a_gymnasium_id_trains_through_the_adapter_and_the_agent_accepts_its_id(tiny_config):
    from fedrl.edge.agent import Fatal, check_env

    config = {
        **tiny_config,
        "env": {"family": "gym", "gym": {"id": "CartPole-v1"}},
        "federation": {"n_clients": 2, "local_steps": 64},
    }
    trainer = trainer_from_yaml(yaml.safe_dump(config), 1)

    update, _ = trainer.train(trainer.fresh_state(), trainer.setup.initial_params(), 1)

    assert update.env_steps >= 64 and np.isfinite(update.delta).all()
    check_env(trainer, "CartPole-v1")
    check_env(trainer, "gym")
    with pytest.raises(Fatal, match="'cartpole'.*'gym / CartPole-v1'"):
        check_env(trainer, "cartpole")
