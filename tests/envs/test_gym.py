"""The Gymnasium face of fedrl: registered ids for the built-in families and the adapter that
turns any Gymnasium id into a family."""

from __future__ import annotations

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import fedrl.envs
from fedrl.envs import base, get_family
from fedrl.envs.cartpole import CARTPOLE, CartPolePhysics
from fedrl.envs.gym_adapter import UserCodeError, gym_family
from fedrl.envs.gym_registration import GYM_IDS
from fedrl.experiment.config import import_function

IDS = list(GYM_IDS.values())


def set_cartpole_length(env, row):
    """A parameter setter as a user would write it: derived physics must follow."""
    env.length = row["length"]
    env.polemass_length = env.masspole * env.length


@pytest.mark.parametrize("env_id", IDS)
def test_registered_ids_pass_the_env_checker(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*symmetric and normalized space.*")
        check_env(env.unwrapped)
    family = get_family(env_id.split("/")[1].split("-")[0].lower())
    assert env.spec.max_episode_steps == family.time_limit
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)


def test_time_limit_truncates_once():
    env = gym.make("fedrl/Pendulum-v0")
    env.reset(seed=0)
    flags = [env.step(np.zeros(1, np.float32))[2:4] for _ in range(200)]
    assert flags[-1] == (False, True) and not any(any(f) for f in flags[:-1])


def test_kwargs_change_physics_and_bad_kwargs_fail():
    short, long = gym.make("fedrl/CartPole-v0", length=0.1), gym.make("fedrl/CartPole-v0", length=0.9)
    (a, _), (b, _) = short.reset(seed=3), long.reset(seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(short.step(1)[0], long.step(1)[0])
    assert gym.make("fedrl/Pendulum-v0", max_torque=1.5).action_space.high[0] == 1.5
    with pytest.raises(ValueError, match="unknown cartpole parameter.*'lenght'.*allowed: length"):
        gym.make("fedrl/CartPole-v0", lenght=0.3)


def test_registration_is_idempotent():
    importlib.reload(fedrl.envs)
    assert gym.make("fedrl/AirQuality-v0").spec.id == "fedrl/AirQuality-v0"


def test_get_family_names_allowed():
    assert get_family("mountaincar").name == "mountaincar"
    with pytest.raises(ValueError, match="allowed: cartpole, pendulum, mountaincar, airquality"):
        get_family("acrobot")


def test_adapter_matches_builtin_cartpole_per_client():
    family = gym_family("CartPole-v1", [("length", 0.5, 0.1, 0.9)], set_cartpole_length)
    assert family.time_limit == 500 and family.action_space == base.Discrete(2)
    params = base.params_from_rows(family, [{"length": 0.2}, {"length": 0.8}])
    rng = np.random.default_rng(0)
    state, obs = base.reset(family, params, 2, rng)
    builtin = base.params_from_rows(CARTPOLE, [{"length": 0.2}, {"length": 0.8}])
    physics = CartPolePhysics(*np.moveaxis(obs.astype(np.float64), -1, 0))  # start where the adapter starts
    push = np.ones((2, 2), dtype=np.int64)
    for _ in range(5):
        state = base.step(family, params, state, push, rng).state
        physics, _, _ = CARTPOLE.transition(builtin, physics, push, None)
    np.testing.assert_allclose(family.observe(params, state.physics), CARTPOLE.observe(builtin, physics), atol=1e-5)
    assert abs(physics.theta_dot[0, 0]) > abs(physics.theta_dot[1, 0])  # short poles fall faster


def test_adapter_auto_resets_like_base_step():
    family = gym_family("CartPole-v1", [("length", 0.5, 0.1, 0.9)], set_cartpole_length)
    params = base.sample_params(family, 2, 1.0, seed=0)
    rng = np.random.default_rng(0)
    state, _ = base.reset(family, params, 2, rng)
    ends = 0
    for _ in range(60):
        result = base.step(family, params, state, np.ones((2, 2), dtype=np.int64), rng)
        done = result.terminated | result.truncated
        np.testing.assert_array_equal(result.state.t[done], 0)
        assert (np.abs(result.obs[done]) <= 0.05).all() and (np.abs(result.final_obs[done, 2]) > 0.2).all()
        ends += int(done.sum())
        state = result.state
    assert ends >= 4


def test_adapter_continuous_actions_are_clipped():
    def set_mass(env, row):
        env.m = row["mass"]

    family = gym_family("Pendulum-v1", [("mass", 1.0, 0.5, 1.5)], set_mass)
    assert family.action_space == base.Continuous(1, "action_bound")
    params = base.sample_params(family, 2, 0.0, seed=0)
    state, _ = base.reset(family, params, 1, np.random.default_rng(0))
    result = base.step(family, params, state, np.full((2, 1, 1), 5.0), np.random.default_rng(1))
    assert (result.reward <= 0).all() and result.obs.shape == (2, 1, 3)
    assert all(h.env.last_u == 2.0 for h in result.state.physics.env.ravel())


def test_a_users_function_is_imported_or_refused_in_one_line():
    assert import_function("math:sqrt", None, "setter")(4.0) == 2.0
    for bad, message in (
        ("math", "setter must look like 'package.module:function', got 'math'"),
        ("math:nope", "cannot load setter 'math:nope': AttributeError"),
        ("no_such_module:f", "cannot load setter 'no_such_module:f': ModuleNotFoundError"),
        ("math:pi", "setter 'math:pi' is not callable"),
    ):
        with pytest.raises(ValueError) as err:
            import_function(bad, None, "setter")
        assert str(err.value).startswith(message)


def set_misspelt(env, row):
    env.lenght = row["length"]  # a typo: Gymnasium's CartPole has `length`


def set_dividing(env, row):
    env.length = row["length"] / 0.0 if row["length"] > 1 else 1 / 0


class Crashing(gym.Env):  # a user's environment that fails on its third step
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 3:
            raise RuntimeError("sensor unplugged")
        return np.zeros(2, np.float32), 0.0, False, False, {}


def _first_steps(family, n=5):
    params = base.sample_params(family, 1, 1.0, seed=0)
    rng = np.random.default_rng(0)
    state, _ = base.reset(family, params, 1, rng)
    for _ in range(n):
        state = base.step(family, params, state, np.zeros((1, 1), dtype=np.int64), rng).state


def test_a_setter_that_sets_an_attribute_the_env_lacks_is_an_error_naming_it():
    family = gym_family("CartPole-v1", [("length", 0.5, 0.1, 0.9)], set_misspelt)

    with pytest.raises(UserCodeError) as err:
        _first_steps(family)

    assert str(err.value) == (
        f"setter {__name__}:set_misspelt set 'lenght', which CartPole-v1 does not have; did you mean 'length'?"
    )


def test_a_failing_setter_or_environment_is_one_line_naming_the_users_file_and_line():
    gym.register("FedrlTestCrashing-v0", entry_point=Crashing, max_episode_steps=50)
    setter_line = set_dividing.__code__.co_firstlineno + 1
    step_line = Crashing.step.__code__.co_firstlineno + 3

    with pytest.raises(UserCodeError) as setter:
        _first_steps(gym_family("CartPole-v1", [("length", 0.5, 0.1, 0.9)], set_dividing))
    with pytest.raises(UserCodeError) as stepping:
        _first_steps(gym_family("FedrlTestCrashing-v0", [], lambda env, row: None))

    assert str(setter.value) == (
        f"setter {__name__}:set_dividing raised ZeroDivisionError: division by zero at {__file__}:{setter_line}"
    )
    assert str(stepping.value) == (
        f"environment 'FedrlTestCrashing-v0' (step) raised RuntimeError: sensor unplugged at {__file__}:{step_line}"
    )
    assert "\n" not in str(setter.value) + str(stepping.value)


def test_setters_that_change_a_class_constant_or_reset_the_env_are_accepted():
    def set_link_mass(env, row):
        env.LINK_MASS_1 = row["mass"]  # a class attribute of Acrobot, set on the instance

    def set_force_and_reset(env, row):
        env.force = row["force"]
        env.reset(seed=0)  # creates `state`, which a fresh MountainCar has only after a reset

    for env_id, param, setter in (
        ("Acrobot-v1", ("mass", 1.0, 0.5, 1.5), set_link_mass),
        ("MountainCar-v0", ("force", 0.001, 0.0005, 0.002), set_force_and_reset),
    ):
        _first_steps(gym_family(env_id, [param], setter), n=2)
