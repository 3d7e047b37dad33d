"""Stable-Baselines3 interop, both ways: a fedrl policy becomes an SB3 PPO model that acts and
values exactly as it does, and an SB3 model becomes a fedrl policy (a warm start for a run) that
acts as SB3 does; SB3 models of another shape are refused, naming what differs."""

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO

from fedrl.experiment.card import policy_card
from fedrl.experiment.loading import load_config
from fedrl.experiment.setup import Setup
from fedrl.policy import Policy, load_policy
from fedrl.policy.sb3 import from_sb3, to_sb3
from fedrl.server.coordinator import pretrained

TANH = {"net_arch": {"pi": [32, 32], "vf": [32, 32]}, "activation_fn": torch.nn.Tanh}


def _fedrl_policy(family: str, seed: int = 0) -> tuple[Setup, Policy]:
    setup = Setup(load_config(None, [f"env.family={family}", "learner.hidden=[32,32]", f"seed={seed}"]))
    params = setup.initial_params() + np.random.default_rng(seed).normal(0, 0.3, setup.net.spec.dim).astype(np.float32)
    return setup, Policy(policy_card(setup, params, 3), params)


def _values(setup: Setup, params: np.ndarray, obs: np.ndarray) -> np.ndarray:
    w = setup.net.unpack(torch.from_numpy(params.copy())[None])  # one client
    return setup.net.value(w, torch.from_numpy(obs)[None]).detach().numpy().reshape(-1)


@pytest.mark.parametrize("family", ["cartpole", "pendulum"])
def test_a_fedrl_policy_as_an_sb3_model_acts_and_values_as_fedrl_does(family, tmp_path):
    setup, policy = _fedrl_policy(family)
    obs = np.random.default_rng(1).normal(0, 1, (64, policy.card.obs_dim)).astype(np.float32)

    model = to_sb3(policy)
    model.save(tmp_path / "model.zip")
    reloaded = PPO.load(tmp_path / "model.zip", device="cpu")
    sb3_actions, _ = reloaded.predict(obs, deterministic=True)
    sb3_values = reloaded.policy.predict_values(torch.from_numpy(obs)).detach().numpy().reshape(-1)

    np.testing.assert_allclose(
        np.asarray(sb3_actions).reshape(64, -1), np.asarray(policy.predict(obs)).reshape(64, -1), atol=1e-5
    )
    np.testing.assert_allclose(sb3_values, _values(setup, policy.params, obs), rtol=1e-5, atol=1e-5)


def test_an_sb3_model_is_a_fedrl_policy_and_a_warm_start_for_a_run(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=TANH, n_steps=64, batch_size=32, seed=0, device="cpu")
    model.learn(128)
    model.save(tmp_path / "sb3.zip")
    obs = np.random.default_rng(2).normal(0, 1, (64, 4)).astype(np.float32)
    setup = Setup(load_config(None, ["learner.hidden=[32,32]"]))

    policy = load_policy(tmp_path / "sb3.zip")
    start, _ = pretrained(setup, tmp_path / "sb3.zip")

    np.testing.assert_array_equal(policy.predict(obs), model.predict(obs, deterministic=True)[0])
    np.testing.assert_array_equal(start, policy.params)
    sb3_values = model.policy.predict_values(torch.from_numpy(obs)).detach().numpy().reshape(-1)
    np.testing.assert_allclose(_values(setup, start, obs), sb3_values, rtol=1e-5, atol=1e-5)
    assert from_sb3(A2C("MlpPolicy", "Pendulum-v1", policy_kwargs=TANH, device="cpu")).card.action.kind == "continuous"


@pytest.mark.parametrize(
    ("policy_kwargs", "message"),
    [
        (
            {"net_arch": {"pi": [32, 32], "vf": [32, 32]}, "activation_fn": torch.nn.ReLU},
            "its activation is ReLU; fedrl's networks use tanh",
        ),
        (
            {"net_arch": {"pi": [32], "vf": [64]}, "activation_fn": torch.nn.Tanh},
            "its actor layers are [32] and its critic's [64]",
        ),
    ],
)
def test_an_sb3_model_of_another_shape_is_refused_naming_what_differs(policy_kwargs, message):
    model = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, device="cpu")

    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_sb3(model)
