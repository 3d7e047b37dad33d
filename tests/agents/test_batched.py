"""Client batching must not leak: a client's gradient and Adam step depend only on its own data."""

import numpy as np
import pytest
import torch

from fedrl.agents import PolicyNet, PolicyShape, distributions, init_params
from fedrl.agents.local import make_task
from fedrl.agents.optim import apply_gradient, make_optimizer
from fedrl.agents.ppo import PPOConfig, _minibatch_loss
from fedrl.envs import get_family, reset
from fedrl.envs.base import Continuous, Discrete

TWO_ACTIONS = Discrete(2)


def _net(action_space=TWO_ACTIONS):
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
        start = task.anchor.repeat(task.n_clients, 1)
        params = start + 0.01 * torch.randn(start.shape, generator=torch.Generator().manual_seed(3))
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
            loss = (flat[0] * torch.tensor([1.0, 2.0, 3.0])).sum() + scale * (
                flat[1] * torch.tensor([3.0, 2.0, 1.0])
            ).sum()
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


def test_fast_tanh_has_a_second_derivative():
    from fedrl.agents.nets import tanh

    x = torch.linspace(-3, 3, 101, dtype=torch.float32, requires_grad=True)
    (first,) = torch.autograd.grad(tanh(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x)

    y = torch.tanh(x.detach())
    torch.testing.assert_close(second, -2 * y * (1 - y**2), atol=2e-6, rtol=0)


def _layer(c, n, n_in, n_out, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.tanh(torch.randn(c, n, n_in, generator=g))
    weight = torch.randn(c, n_in, n_out, generator=g) / n_in**0.5
    bias = torch.randn(c, n_out, generator=g)
    upstream = torch.randn(c, n, n_out, generator=g)
    return x, weight, bias, upstream


def _grads(product, x, weight, bias, upstream, create_graph=False):
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    out = product(*leaves)
    grads = torch.autograd.grad(out, leaves, upstream, create_graph=create_graph)
    return out, grads, leaves


@pytest.mark.parametrize(
    "n_in,n_out",
    [(4, 64), (64, 64), (64, 3), (64, 2), (64, 1), (32, 2), (32, 1), (16, 2), (16, 1), (67, 2), (50, 1), (7, 3)],
)
def test_linear_layer_gives_autograds_baddbmm_values_and_gradients_to_the_bit(n_in, n_out):
    """Widths where the weight gradient is transposed (inputs a multiple of 4) and where it is not:
    the fast backward changes no number."""
    from fedrl.agents.nets import linear

    layer = _layer(100, 256, n_in, n_out, seed=n_in * 100 + n_out)
    out, grads, _ = _grads(linear, *layer)
    ref_out, ref_grads, _ = _grads(lambda x, w, b: torch.baddbmm(b.unsqueeze(1), x, w), *layer)
    assert torch.equal(out, ref_out)
    for mine, ref in zip(grads, ref_grads):
        assert mine.shape == ref.shape and torch.equal(mine, ref)


def test_linear_layer_differentiates_with_respect_to_the_weight_alone():
    from fedrl.agents.nets import linear

    x, weight, bias, upstream = _layer(3, 8, 64, 2, seed=1)
    weight = weight.requires_grad_(True)
    out = linear(x, weight, bias)
    (grad_w,) = torch.autograd.grad(out, [weight], upstream)
    assert torch.equal(grad_w, torch.bmm(x.mT, upstream))


def test_linear_layer_has_a_second_derivative():
    from fedrl.agents.nets import linear

    layer = _layer(3, 16, 5, 1, seed=0)
    second = []
    for product in (linear, lambda x, w, b: torch.baddbmm(b.unsqueeze(1), x, w)):
        _, (grad_x, _, _), (_, weight, _) = _grads(product, *layer, create_graph=True)
        second.append(torch.autograd.grad((grad_x**2).sum(), weight)[0])
    torch.testing.assert_close(second[0], second[1])
    assert second[0].abs().sum() > 0


def test_unpacked_gradients_are_those_of_slicing_to_the_bit_and_zero_where_unused():
    net = _net(Continuous(1, "max_torque"))
    task = _task(net)
    params = task.anchor.repeat(task.n_clients, 1)
    params = params + 0.1 * torch.randn(params.shape, generator=torch.Generator().manual_seed(4))
    batch = _batch(continuous=True)
    sliced = params.clone().requires_grad_(True)
    spec, c = net.spec, params.shape[0]
    w = {
        name: sliced[:, off : off + size].reshape((c, *dims))
        for name, dims, off, size in zip(spec.names, spec.shapes, spec.offsets, spec.sizes)
    }
    obs = batch["obs"]
    loss = distributions.log_prob(net.heads(w, obs), batch["actions"]).sum() + net.value(w, obs).sum()
    loss.backward()
    flat = params.clone().requires_grad_(True)
    again = net.unpack(flat)
    (distributions.log_prob(net.heads(again, obs), batch["actions"]).sum() + net.value(again, obs).sum()).backward()
    assert torch.equal(flat.grad, sliced.grad)
    actor_only = params.clone().requires_grad_(True)
    net.actor(net.unpack(actor_only), obs).sum().backward()
    critic = slice(spec.offsets[spec.names.index("critic.0.weight")], None)
    assert torch.all(actor_only.grad[:, critic] == 0) and torch.any(actor_only.grad[:, : critic.start] != 0)


def _a2c_batch(C=3, N=24, seed=0):
    from fedrl.agents.a2c import Batch

    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(C, N, 4, generator=g),
        torch.randint(0, 2, (C, N), generator=g),
        torch.randn(C, N, generator=g),
        torch.randn(C, N, generator=g),
    )


def _transitions(C=3, B=16, seed=0):
    from fedrl.agents.dqn import Transitions

    g = torch.Generator().manual_seed(seed)
    return Transitions(
        torch.randn(C, B, 4, generator=g),
        torch.randint(0, 2, (C, B), generator=g),
        torch.randn(C, B, generator=g),
        torch.randn(C, B, 4, generator=g),
        (torch.rand(C, B, generator=g) < 0.2).float(),
    )


def _only_client_0_kept(batch, other):
    """``batch`` with every client but the first replaced by ``other``'s data."""
    return type(batch)(*(torch.cat([mine[:1], theirs[1:]]) for mine, theirs in zip(batch, other)))


def test_a2c_and_dqn_gradients_ignore_other_clients_data():
    from fedrl.agents import A2CConfig, DQNConfig, make_net
    from fedrl.agents.a2c import loss as a2c_loss
    from fedrl.agents.dqn import td_loss

    # Prepare: one loss per learner, and a batch whose clients 1 and 2 saw something else
    family = get_family("cartpole")
    a2c, dqn = A2CConfig(ent_coef=0.01, kl_coef=0.5, norm_adv=True, hidden=(16, 16)), DQNConfig(hidden=(16, 16))
    task = _task(make_net(a2c, family))
    q_net = make_net(dqn, family)
    noise = 0.05 * torch.randn(3, task.net.spec.dim, generator=torch.Generator().manual_seed(3))
    a2c_params = task.anchor.repeat(3, 1) + noise
    q_params = torch.from_numpy(init_params(q_net.shape, 1)).repeat(3, 1) + noise[:, : q_net.spec.dim]
    target = q_net.unpack(q_params.flip(0).clone())
    cases = [
        (
            lambda flat, b: a2c_loss(task, a2c, flat, b, task.net.unpack(a2c_params.flip(0).clone())),
            a2c_params,
            _a2c_batch,
        ),
        (lambda flat, b: td_loss(q_net, dqn, flat, target, b), q_params, _transitions),
    ]
    for loss_fn, params, make_batch in cases:
        batch = make_batch()
        changed = _only_client_0_kept(batch, make_batch(seed=9))
        grads = []
        for b in (batch, changed):
            # Execute
            flat = params.clone().requires_grad_(True)
            loss_fn(flat, b).sum().backward()
            grads.append(flat.grad)
        # Assert
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
        assert not torch.allclose(grads[0][1], grads[1][1])


def test_scaffold_correction_is_applied_after_clipping_and_shifts_an_sgd_step_by_lr_times_it():
    # Prepare: the same loss, stepped by SGD with and without the correction c - c_i
    lr = 0.1
    correction = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    after = {}
    for name, corr in (("plain", None), ("corrected", correction)):
        flat = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], requires_grad=True)
        opt = torch.optim.SGD([flat], lr=lr)
        loss = (flat * torch.tensor([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]])).sum()
        # Execute: the raw gradient (norm 5) is clipped to 1; the correction is not clipped
        apply_gradient(opt, flat, loss, torch.zeros(3), prox_mu=0.0, max_grad_norm=1.0, correction=corr)
        after[name] = (flat.detach().clone(), flat.grad.clone())
    # Assert
    torch.testing.assert_close(after["corrected"][0] - after["plain"][0], -lr * correction, rtol=0, atol=1e-7)
    torch.testing.assert_close(after["plain"][1][0], torch.tensor([0.6, 0.8, 0.0]))


def test_kl_matches_torch_distributions():
    from fedrl.agents.distributions import kl
    from fedrl.agents.nets import Heads

    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=p_logits), torch.distributions.Categorical(logits=q_logits)
    )
    torch.testing.assert_close(kl(Heads(p_logits, None, None), Heads(q_logits, None, None)), expected)
    p_mean, q_mean = torch.randn(2, 5, 2, generator=g), torch.randn(2, 5, 2, generator=g)
    p_log_std, q_log_std = 0.3 * torch.randn(2, 1, 2, generator=g), 0.3 * torch.randn(2, 1, 2, generator=g)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(p_mean, p_log_std.exp()), torch.distributions.Normal(q_mean, q_log_std.exp())
    ).sum(-1)
    torch.testing.assert_close(kl(Heads(p_mean, p_log_std, None), Heads(q_mean, q_log_std, None)), expected)


def test_scaffold_correction_bypasses_adams_normalisation():
    # Prepare: Adam's first step moves every coordinate by about lr whatever the gradient;
    # a correction fed through Adam would be normalised away, applied outside it is not
    flat = torch.zeros(1, 2, requires_grad=True)
    opt = torch.optim.Adam([flat], lr=0.1)
    # Execute
    apply_gradient(
        opt,
        flat,
        (flat * torch.tensor([[1.0, 1.0]])).sum(),
        torch.zeros(2),
        0.0,
        0.0,
        correction=torch.tensor([[0.0, 3.0]]),
    )
    # Assert: Adam's step (-0.1 each) plus -lr * correction (0, -0.3)
    torch.testing.assert_close(flat.detach(), torch.tensor([[-0.1, -0.4]]), atol=1e-5, rtol=0)
