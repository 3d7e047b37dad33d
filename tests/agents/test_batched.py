"""Client batching must not leak: a client's gradient and Adam step depend only on its own data."""

import numpy as np
import torch

from fedrl.agents import PolicyNet, PolicyShape, init_params
from fedrl.agents.optim import apply_gradient, make_optimizer
from fedrl.agents.ppo import PPOConfig, _minibatch_loss
from fedrl.agents.local import make_task
from fedrl.envs import get_family, reset
from fedrl.envs.base import Continuous, Discrete


def _net(action_space=Discrete(2)):
    return PolicyNet(PolicyShape(4, action_space, (16, 16)))


def _batch(C=3, N=32, seed=0, continuous=False):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randn(C, N, 1, generator=g) if continuous else torch.randint(0, 2, (C, N), generator=g)
    return {
        "obs": torch.randn(C, N, 4, generator=g),
        "actions": actions,
        "logp": torch.randn(C, N, generator=g) * 0.1 - 0.7,
        "adv": torch.randn(C, N, generator=g),
        "returns": torch.randn(C, N, generator=g),
    }


def _grad(net, params, batch, task):
    flat = params.clone().requires_grad_(True)
    loss = _minibatch_loss(task, PPOConfig(ent_coef=0.01), flat, batch, torch.arange(batch["logp"].shape[1]))
    loss.sum().backward()
    return flat.grad


def _task(net):
    family = get_family("cartpole")
    env_params = np.tile(family.standard_params, (3, 1))
    state, _ = reset(family, env_params, 1, np.random.default_rng(0))
    start = init_params(net.shape, seed=1)
    return make_task(net, family, env_params, state, start, 0.0, np.random.default_rng(0))


def test_a_clients_gradient_ignores_other_clients_data():
    for space, continuous in ((Discrete(2), False), (Continuous(1, "max_torque"), True)):
        net = _net(space)
        task = _task(net)
        params = task.start + 0.01 * torch.randn(task.start.shape, generator=torch.Generator().manual_seed(3))
        batch = _batch(continuous=continuous)
        other = {k: v.clone() for k, v in batch.items()}
        for key in other:  # change everything client 1 and 2 saw
            other[key][1:] = _batch(seed=9, continuous=continuous)[key][1:]
        g1, g2 = _grad(net, params, batch, task), _grad(net, params, other, task)
        torch.testing.assert_close(g1[0], g2[0], rtol=0, atol=0)
        assert not torch.allclose(g1[1], g2[1])


def test_adam_state_and_clipping_are_per_client():
    flat = torch.zeros(2, 3, requires_grad=True)
    opt = make_optimizer(flat, lr=0.1)
    anchor = torch.zeros(3)
    # client 0's loss is the same in both runs; client 1's is 1000 times larger in the second
    for scale in (1.0, 1000.0):
        flat.data.zero_()
        opt = make_optimizer(flat, lr=0.1)
        for _ in range(3):
            loss = (flat[0] * torch.tensor([1.0, 2.0, 3.0])).sum() + scale * (flat[1] * torch.tensor([3.0, 2.0, 1.0])).sum()
            apply_gradient(opt, flat, loss, anchor, prox_mu=0.0, max_grad_norm=1.0)
        if scale == 1.0:
            first = flat.detach().clone()
    torch.testing.assert_close(flat.detach()[0], first[0], rtol=0, atol=0)


def test_proximal_term_pulls_towards_the_anchor():
    flat = torch.tensor([[2.0, -2.0]], requires_grad=True)
    opt = torch.optim.SGD([flat], lr=0.5)
    apply_gradient(opt, flat, flat.sum() * 0.0, torch.zeros(2), prox_mu=1.0, max_grad_norm=0.0)
    # gradient mu * (w - anchor) = (2, -2); SGD step 0.5 -> (1, -1)
    torch.testing.assert_close(flat.detach(), torch.tensor([[1.0, -1.0]]))


def test_fast_tanh_matches_torch_tanh_in_value_and_gradient():
    from fedrl.agents.nets import tanh

    x = torch.linspace(-12, 12, 1001, dtype=torch.float32, requires_grad=True)
    y = tanh(x)
    y.sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    torch.tanh(ref).sum().backward()
    torch.testing.assert_close(y.detach(), torch.tanh(ref.detach()), atol=3e-7, rtol=0)
    torch.testing.assert_close(x.grad, ref.grad, atol=1e-6, rtol=0)
