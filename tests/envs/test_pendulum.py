"""The batched Pendulum family against Gymnasium's Pendulum-v1, transition by transition."""

from __future__ import annotations

import numpy as np

from fedrl.envs import base
from fedrl.envs.pendulum import PENDULUM


def _torque(rng, shape):
    # Beyond the +-2 limit on purpose, to exercise the clipping.
    return rng.uniform(-3.0, 3.0, size=(*shape, 1)).astype(np.float32)


def test_matches_gymnasium_pendulum(compare_with_gymnasium):
    episodes = compare_with_gymnasium(PENDULUM, "Pendulum-v1", _torque, n_steps=450)
    assert episodes == 2 * 2 * 3  # never terminates: every episode is cut at 200 steps


def test_torque_clipped_to_client_max_torque():
    params = base.params_from_rows(PENDULUM, [{"max_torque": 1.5}, {"max_torque": 2.5}])
    physics = PENDULUM.init_state(params, 1, np.random.default_rng(0))
    physics = physics._replace(th=np.zeros((2, 1)), thdot=np.zeros((2, 1)))
    new, reward, _ = PENDULUM.transition(params, physics, np.full((2, 1, 1), 10.0), None)
    np.testing.assert_allclose(new.thdot[:, 0], 3.0 * np.array([1.5, 2.5]) * 0.05)
    np.testing.assert_allclose(reward[:, 0], -0.001 * np.array([1.5, 2.5]) ** 2)
