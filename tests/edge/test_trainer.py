"""One edge client's local training from its own recorded experience, for the experiment YAML a
server sends."""

import numpy as np
import pytest
import yaml

from fedrl.core.pipeline import PipelineState, client_message
from fedrl.edge.trainer import EdgeTrainer, trainer_from_yaml
from fedrl.experiment.config import ConfigError
from fedrl.experiment.streams import PIPELINE_STREAM

from .conftest import recorded


def test_a_cartpole_client_learns_a_finite_delta_of_the_policy_shape_from_its_experience(experiment):
    trainer = trainer_from_yaml(experiment, 1)
    params = trainer.setup.initial_params()
    experience = recorded(trainer, params, 128)

    update, _ = trainer.train(trainer.fresh_state(), params, 1, experience)

    assert update.delta.dtype == np.float32 and update.delta.shape == params.shape
    assert np.isfinite(update.delta).all() and np.abs(update.delta).max() > 0
    assert update.env_steps == 128  # what it learned from, no more
    assert np.isfinite(update.metrics.loss) and update.metrics.episodes == experience.episodes >= 1
    assert update.control_delta is None


@pytest.mark.parametrize(
    "learner",
    [{"name": "ppo"}, {"name": "a2c"}, {"name": "reinforce"}, {"name": "dqn", "learning_starts": 32, "batch_size": 16}],
    ids=lambda learner: learner["name"],
)
def test_every_learner_learns_from_recorded_experience(experiment, learner):
    data = yaml.safe_load(experiment)
    data["learner"] = learner
    trainer = trainer_from_yaml(yaml.safe_dump(data), 0)
    params = trainer.setup.initial_params()

    update, state = trainer.train(trainer.fresh_state(), params, 1, recorded(trainer, params, 128))

    assert np.isfinite(update.delta).all() and np.abs(update.delta).max() > 0
    if learner["name"] == "dqn":  # the transitions joined the replay buffer the device keeps
        assert state.learner.dqn.replay.size[0] == 128 and state.learner.dqn.env_steps[0] == 128


def test_same_experience_client_and_round_give_the_same_delta_bit_for_bit(experiment):
    first, second = trainer_from_yaml(experiment, 2), trainer_from_yaml(experiment, 2)
    params = first.setup.initial_params()
    experience = recorded(first, params, 128)

    a, _ = first.train(first.fresh_state(), params, 4, experience)
    b, _ = second.train(second.fresh_state(), params, 4, experience)
    other_round, _ = first.train(first.fresh_state(), params, 5, experience)

    assert a.delta.tobytes() == b.delta.tobytes()
    assert a.delta.tobytes() != other_round.delta.tobytes()  # minibatches are drawn per round


def test_with_a_pipeline_the_update_leaves_as_the_simulated_clients_bytes_and_its_residual_survives_a_restart(
    experiment, tmp_path
):
    data = yaml.safe_load(experiment)
    data["pipeline"] = {"compression": {"sparsify": "topk", "ratio": 0.05, "bits": 8, "error_feedback": True}}
    trainer = trainer_from_yaml(yaml.safe_dump(data), 2)
    setup, params = trainer.setup, trainer.setup.initial_params()
    residual = np.zeros((3, setup.net.spec.dim), np.float32)

    experience = recorded(trainer, params, 128)

    update, state = trainer.train(trainer.fresh_state(), params, 1, experience)
    trainer.save_learner(tmp_path, state)
    restored = EdgeTrainer(setup, 2).restore(tmp_path)
    again, _ = trainer.train(restored, params, 2, experience)
    unbroken, _ = trainer.train(state, params, 2, experience)

    simulated = client_message(
        setup.config.pipeline, update.delta, residual[2], setup.rng(PIPELINE_STREAM, 1, 2), setup.net.spec.sizes
    )
    assert update.payload == simulated.payload and len(update.payload) < update.delta.nbytes / 10
    np.testing.assert_array_equal(restored.pipeline.residual[0], simulated.residual)
    assert np.abs(simulated.residual).max() > 0 and again.payload == unbroken.payload


def test_without_a_pipeline_the_delta_travels_as_it_is(experiment):
    trainer = trainer_from_yaml(experiment, 0)

    params = trainer.setup.initial_params()
    update, state = trainer.train(trainer.fresh_state(), params, 1, recorded(trainer, params, 64))

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

    update, state = trainer.train(trainer.fresh_state(), params, 1, recorded(trainer, params, 64), control)
    trainer.save_learner(tmp_path, state)
    restored = EdgeTrainer(trainer.setup, 0).restore(tmp_path)

    assert update.control_delta.shape == params.shape and np.abs(update.control_delta).max() > 0
    np.testing.assert_array_equal(restored.learner.control, state.learner.control)
    assert not np.array_equal(restored.learner.control, trainer.fresh_state().learner.control)


def test_learner_state_of_another_client_or_network_is_not_taken_up(experiment, tmp_path):
    data = yaml.safe_load(experiment)
    data["strategy"] = {"name": "scaffold"}
    trainer = trainer_from_yaml(yaml.safe_dump(data), 0)
    params = trainer.setup.initial_params()
    control = np.zeros(trainer.setup.net.spec.dim, np.float32)
    _, state = trainer.train(trainer.fresh_state(), params, 1, recorded(trainer, params, 64), control)
    trainer.save_learner(tmp_path, state)

    other_client = trainer_from_yaml(yaml.safe_dump(data), 1).restore(tmp_path)
    data["learner"]["hidden"] = [16]
    other_net = trainer_from_yaml(yaml.safe_dump(data), 0).restore(tmp_path)

    assert not other_client.learner.control.any()
    assert not other_net.learner.control.any()


def test_a_device_experiment_trains_from_the_spaces_alone_with_the_devices_own_environment(tiny_config):
    import gymnasium as gym

    config = {
        **tiny_config,
        "env": {"family": "device", "device": {"obs_dim": 4, "discrete": 2, "time_limit": 500}},
        "federation": {"n_clients": 2, "local_steps": 64},
    }
    trainer = trainer_from_yaml(yaml.safe_dump(config), 1)
    params = trainer.setup.initial_params()

    experience = recorded(trainer, params, 64, env=gym.make("CartPole-v1"))
    update, _ = trainer.train(trainer.fresh_state(), params, 1, experience)

    assert update.env_steps == 64 and np.isfinite(update.delta).all()


def test_an_experiment_naming_a_gymnasium_setter_is_refused_before_anything_is_imported(tiny_config, tmp_path):
    import sys

    marker = tmp_path / "imported"
    (tmp_path / "hostile_setter.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\ndef setter(env, row):\n    pass\n"
    )
    config = {
        **tiny_config,
        "env": {
            "family": "gym",
            "gym": {"id": "CartPole-v1", "setter": "hostile_setter:setter", "setter_dir": str(tmp_path)},
        },
    }

    with pytest.raises(ConfigError, match="imports no code a server names"):
        trainer_from_yaml(yaml.safe_dump(config), 0)
    assert not marker.exists() and "hostile_setter" not in sys.modules


@pytest.mark.parametrize("pending", [True, False], ids=["update-saved", "update-never-saved"])
def test_the_state_after_an_update_is_kept_only_with_that_update(experiment, tmp_path, pending):
    # Prepare: SCAFFOLD's c_i before a round, and after it (staged beside the update)
    data = yaml.safe_load(experiment)
    data["strategy"] = {"name": "scaffold"}
    trainer = trainer_from_yaml(yaml.safe_dump(data), 0)
    params, before = trainer.setup.initial_params(), trainer.fresh_state()
    trainer.save_learner(tmp_path, before)
    control = np.full_like(params, 0.01)
    _, after = trainer.train(before, params, 1, recorded(trainer, params, 64), control)
    trainer.save_learner(tmp_path, after, staged=True)

    # Execute: the device restarts, with its update on disk or killed before writing it
    restored = trainer.restore(tmp_path, pending=pending)

    # Assert: the state that made a saved update goes on; a state without its update is dropped
    expected = after if pending else before
    np.testing.assert_array_equal(restored.learner.control, expected.learner.control)
    assert not (tmp_path / "learner.next.safetensors").exists()


def _normalising(experiment: str, **normalize) -> str:
    data = yaml.safe_load(experiment)
    data["learner"] = {**data.get("learner", {}), "normalize": {"obs": True, "reward": True, **normalize}}
    return yaml.safe_dump(data)


@pytest.mark.parametrize("name", ["ppo", "a2c", "reinforce", "dqn"])
def test_a_normalising_learner_starts_from_the_fleets_statistics_and_sends_those_of_what_it_observed(experiment, name):
    from fedrl.agents.normalize import init_stats
    from fedrl.core.moments import Moments
    from fedrl.core.normstats import NormStats

    data = yaml.safe_load(experiment)
    extra = {"learning_starts": 32} if name == "dqn" else {}
    data["learner"] = {"name": name, "normalize": {"obs": True, "reward": True}, **extra}
    trainer = trainer_from_yaml(yaml.safe_dump(data), 0)
    params = trainer.setup.initial_params()
    experience = recorded(trainer, params, 128)
    nothing = init_stats(trainer.setup.config.learner.normalize, 4)
    rng = np.random.default_rng(0)
    fleet = NormStats(Moments.of(rng.normal(5, 2, (500, 4))), Moments.of(rng.normal(0, 30, (500, 1))))

    update, state = trainer.train(trainer.fresh_state(), params, 1, experience, norm=fleet)
    raw, _ = trainer.train(trainer.fresh_state(), params, 1, experience, norm=nothing)

    # the statistics of every observation it learned from (REINFORCE: those of finished episodes), exactly
    steps = update.env_steps
    assert update.norm.obs.count == update.norm.returns.count == steps and (steps == 128 or name == "reinforce")
    np.testing.assert_allclose(update.norm.obs.mean, experience.obs[:steps].astype(np.float64).mean(0), rtol=1e-9)
    assert state.norm is None
    # the fleet's statistics shaped the update
    assert np.isfinite(update.delta).all() and update.delta.tobytes() != raw.delta.tobytes()


def test_without_the_tasks_statistics_a_normalising_learner_refuses_to_train(experiment):
    trainer = trainer_from_yaml(_normalising(experiment), 0)
    params = trainer.setup.initial_params()

    with pytest.raises(ValueError, match="the task carries no statistics"):
        trainer.train(trainer.fresh_state(), params, 1, recorded(trainer, params, 64))


def test_personal_statistics_are_the_devices_own_across_rounds_and_a_restart(experiment, tmp_path):
    from fedrl.core.moments import Moments
    from fedrl.core.normstats import NormStats

    trainer = trainer_from_yaml(_normalising(experiment, stats="personal"), 0)
    params = trainer.setup.initial_params()
    rng = np.random.default_rng(0)
    pooled = NormStats(Moments.of(rng.normal(5, 2, (500, 4))), Moments.of(rng.normal(0, 30, (500, 1))))
    fresh = trainer.fresh_state()
    assert fresh.norm.obs.count.tolist() == [0]
    # before it observed anything, it acts with the version's (pooled) statistics
    assert trainer.acting_stats(fresh, pooled) is pooled
    experience = recorded(trainer, params, 64, seed=1)

    first, state = trainer.train(fresh, params, 1, experience, norm=pooled)
    trainer.save_learner(tmp_path, state)
    restored = trainer.restore(tmp_path)
    second, after = trainer.train(restored, params, 2, recorded(trainer, params, 64, seed=2), norm=pooled)

    # it trains from its own statistics, not the pooled ones the task carries
    fleet_trainer = trainer_from_yaml(_normalising(experiment), 0)
    from_own, _ = fleet_trainer.train(fleet_trainer.fresh_state(), params, 1, experience, norm=fresh.norm.total())
    from_pooled, _ = fleet_trainer.train(fleet_trainer.fresh_state(), params, 1, experience, norm=pooled)
    assert first.delta.tobytes() == from_own.delta.tobytes() != from_pooled.delta.tobytes()
    # it sends each round's statistics and keeps all of them as its own, across the restart
    assert first.norm.obs.count == second.norm.obs.count == 64
    assert after.norm.obs.count.tolist() == [128]
    np.testing.assert_allclose(after.norm.total().obs.mean, first.norm.merge(second.norm).obs.mean)
    own = trainer.acting_stats(after, pooled)
    assert own.obs.count == 128
    card = trainer.policy(2, params, after, 0.0, pooled).card
    np.testing.assert_allclose(card.obs_norm.mean, own.obs.mean.astype(np.float32))


def test_under_dp_personal_statistics_are_kept_but_not_sent(experiment):
    data = yaml.safe_load(_normalising(experiment, stats="personal"))
    data["pipeline"] = {"clip_norm": 1.0, "dp": {"mode": "local", "noise_multiplier": 0.1}}
    trainer = trainer_from_yaml(yaml.safe_dump(data), 0)
    params = trainer.setup.initial_params()

    update, state = trainer.train(trainer.fresh_state(), params, 1, recorded(trainer, params, 64), norm=None)

    assert update.norm is None and update.payload is not None  # nothing beside the noised update
    assert state.norm.obs.count.tolist() == [64]  # but the device keeps what it observed
