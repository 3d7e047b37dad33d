"""The batched CartPole family against Gymnasium's CartPole-v1, transition by transition."""

from __future__ import annotations

from fedrl.envs.cartpole import CARTPOLE


def test_matches_gymnasium_cartpole(compare_with_gymnasium):
    episodes = compare_with_gymnasium(
        CARTPOLE, "CartPole-v1", lambda rng, shape: rng.integers(0, 2, size=shape), n_steps=300
    )
    assert episodes >= 20  # random pushes end episodes quickly, so many resets are covered
