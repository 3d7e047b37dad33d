import numpy as np
import torch

from fedrl.agents.rollout import Rollout, first_episode_mask, gae, returns_to_go


def _random_rollout(T=7, C=2, E=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    dones = (torch.rand(T, C, E, generator=g) < 0.3).float()
    return Rollout(
        obs=torch.zeros(T, C, E, 1),
        actions=torch.zeros(T, C, E, dtype=torch.long),
        logp=torch.zeros(T, C, E),
        values=torch.randn(T, C, E, generator=g),
        rewards=torch.randn(T, C, E, generator=g),
        dones=dones,
        last_value=torch.randn(C, E, generator=g),
    )


def test_vectorized_gae_matches_a_plain_loop():
    r = _random_rollout()
    gamma, lam = 0.97, 0.9
    adv, returns = gae(r, gamma, lam)
    T, C, E = r.rewards.shape
    for c in range(C):
        for e in range(E):
            expected, running = [0.0] * T, 0.0
            for t in reversed(range(T)):
                next_v = r.last_value[c, e].item() if t == T - 1 else r.values[t + 1, c, e].item()
                nonterminal = 1.0 - r.dones[t, c, e].item()
                delta = r.rewards[t, c, e].item() + gamma * next_v * nonterminal - r.values[t, c, e].item()
                running = delta + gamma * lam * nonterminal * running
                expected[t] = running
            np.testing.assert_allclose(adv[:, c, e].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(returns, adv + r.values)


def test_returns_to_go_restart_at_episode_ends():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0]).reshape(4, 1, 1)
    dones = torch.tensor([0.0, 1.0, 0.0, 0.0]).reshape(4, 1, 1)
    out = returns_to_go(rewards, dones, gamma=0.5).flatten().tolist()
    assert out == [1.5, 1.0, 1.5, 1.0]


def test_first_episode_mask_keeps_the_ending_step_only_of_the_first_episode():
    dones = torch.tensor([0.0, 1.0, 0.0, 1.0]).reshape(4, 1, 1)
    assert first_episode_mask(dones).flatten().tolist() == [1.0, 1.0, 0.0, 0.0]
