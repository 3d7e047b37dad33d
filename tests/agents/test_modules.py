"""A user's own torch network as the policy's towers: each client runs it with its own parameters,
its gradient depends on its own data only, round-0 parameters come from the seed, and a factory
that does not fit is refused with a message naming what is wrong."""

import numpy as np
import pytest
import torch
from torch import nn

from fedrl.agents import ModuleNet, PolicyNet, PolicyShape, PPOConfig, init_params, make_net
from fedrl.agents.ppo import _minibatch_loss
from fedrl.envs import get_family
from fedrl.envs.base import Continuous, Discrete


def layer_norm_mlp(obs_dim: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(obs_dim, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, n_out))


def _client_params(net: ModuleNet, seed: int, n_clients: int = 3) -> torch.Tensor:
    start = torch.from_numpy(net.initial_params(seed)).repeat(n_clients, 1)
    return start + 0.1 * torch.randn(start.shape, generator=torch.Generator().manual_seed(7))


def test_each_client_runs_the_users_module_with_its_own_parameters():
    net = ModuleNet(PolicyShape(4, Discrete(2), (64,)), layer_norm_mlp)
    flat = _client_params(net, seed=0)
    obs = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))

    heads = net.heads(net.unpack(flat), obs)

    for c in range(3):  # the reference: a plain module holding client c's tensors
        w = net.unpack(flat)
        actor, critic = layer_norm_mlp(4, 2), layer_norm_mlp(4, 1)
        actor.load_state_dict({k.removeprefix("actor."): v[c] for k, v in w.items() if k.startswith("actor.")})
        critic.load_state_dict({k.removeprefix("critic."): v[c] for k, v in w.items() if k.startswith("critic.")})
        torch.testing.assert_close(heads.actor[c], actor(obs[c]))
        torch.testing.assert_close(heads.value[c], critic(obs[c]).squeeze(-1))
    assert net.spec.names[0] == "actor.0.weight" and net.spec.dim == 2 * (4 * 16 + 16 + 32) + 16 * 2 + 2 + 16 + 1


def test_a_clients_gradient_through_the_users_module_ignores_other_clients_data():
    family = get_family("cartpole")
    net = make_net(PPOConfig(), family, layer_norm_mlp)
    g = torch.Generator().manual_seed(0)
    batch = {
        "obs": torch.randn(3, 32, 4, generator=g),
        "actions": torch.randint(0, 2, (3, 32), generator=g),
        "logp": torch.full((3, 32), -0.69),
        "adv": torch.randn(3, 32, generator=g),
        "returns": torch.randn(3, 32, generator=g),
    }
    other = {k: torch.cat([v[:1], torch.roll(v[1:], 5, dims=1) + (k == "obs")], 0) for k, v in batch.items()}

    def grad(data):
        flat = _client_params(net, seed=0).requires_grad_(True)
        task = type("Task", (), {"net": net})()
        _minibatch_loss(task, PPOConfig(), flat, data, torch.arange(32)).sum().backward()
        return flat.grad

    g1, g2 = grad(batch), grad(other)
    torch.testing.assert_close(g1[0], g2[0], rtol=0, atol=0)
    assert not torch.allclose(g1[1], g2[1])


def test_round_zero_parameters_are_the_factorys_own_init_fixed_by_the_seed():
    net = ModuleNet(PolicyShape(3, Continuous(1, "max_torque"), (64,)), layer_norm_mlp)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()

    a, b, c = net.initial_params(5), net.initial_params(5), net.initial_params(6)

    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's torch stream is untouched
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert "actor.log_std" in net.spec.names and not a[net.spec.slice("actor.log_std")].any()
    layer_norm_weight = a[net.spec.slice("actor.1.weight")]
    np.testing.assert_array_equal(layer_norm_weight, np.ones(16, np.float32))  # LayerNorm's own init


def test_fedrls_mlp_and_the_same_mlp_as_a_users_module_agree():
    shape = PolicyShape(4, Discrete(2), (8,))
    ours = PolicyNet(shape)

    def same_mlp(obs_dim, n_out):
        return nn.Sequential(nn.Linear(obs_dim, 8), nn.Tanh(), nn.Linear(8, n_out))

    theirs = ModuleNet(shape, same_mlp)
    w = ours.unpack(torch.from_numpy(init_params(shape, 0))[None])
    vector = torch.cat([_as_linear(w, name) for name in theirs.spec.names])[None]
    obs = torch.randn(1, 6, 4)

    mine, reference = theirs.heads(theirs.unpack(vector), obs), ours.heads(w, obs)

    torch.testing.assert_close(mine.actor, reference.actor)
    torch.testing.assert_close(mine.value, reference.value)


def _as_linear(w: dict, name: str) -> torch.Tensor:
    """fedrl's tensor for the module's ``name``: Sequential index 2 is fedrl's layer 1, and
    nn.Linear keeps ``(out, in)`` weights where fedrl keeps ``(in, out)``."""
    tensor = w[name.replace(".2.", ".1.")][0]
    return (tensor.T if name.endswith("weight") else tensor).reshape(-1)


class _WithBatchNorm(nn.Module):
    def __init__(self, obs_dim, n_out):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_dim, 8), nn.BatchNorm1d(8), nn.Linear(8, n_out))

    def forward(self, x):
        return self.body(x)


class _Broken(nn.Module):
    def __init__(self, obs_dim, n_out):
        super().__init__()
        self.layer = nn.Linear(obs_dim, n_out)

    def forward(self, x):
        return self.layer(x) + self.bias  # no such attribute


class _NotBatchable(nn.Module):
    def __init__(self, obs_dim, n_out):
        super().__init__()
        self.layer = nn.Linear(obs_dim, n_out)

    def forward(self, x):
        out = self.layer(x)
        return out if out.sum().item() > -1e9 else -out  # a Python branch on a value


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda obs_dim, n_out: "a string", "must return a torch.nn.Module, got str"),
        (lambda obs_dim, n_out: nn.Identity(), "without parameters"),
        (lambda obs_dim, n_out: nn.Linear(obs_dim, 3), r"maps a \(2, 4\) batch to \(2, 3\), not \(2, 2\)"),
        (_WithBatchNorm, r"batch normalisation \(body.1\).*LayerNorm"),
        (_Broken, r"the network raised AttributeError: .*'bias' at .*test_modules.py:\d+$"),
        (_NotBatchable, r"run for each client by torch.func.vmap, raised RuntimeError: .*test_modules.py:\d+$"),
    ],
    ids=["not a module", "no parameters", "wrong output", "batch norm", "raises", "not batchable"],
)
def test_a_factory_that_does_not_fit_is_refused_naming_why(factory, message):
    with pytest.raises(ValueError, match=message):
        make_net(PPOConfig(), get_family("cartpole"), factory)


class _RandomProjection(nn.Module):
    """A module whose buffer the factory draws at random: every copy must draw the same."""

    def __init__(self, obs_dim, n_out):
        super().__init__()
        self.register_buffer("projection", torch.randn(obs_dim, 8))
        self.head = nn.Linear(8, n_out)

    def forward(self, x):
        return self.head(x @ self.projection)


def test_a_random_buffer_is_the_same_in_every_copy_of_the_users_network():
    from fedrl.policy.card import ActionSpec, PolicyCard
    from fedrl.policy.runtime import Policy

    shape = PolicyShape(4, Discrete(2), (64,))
    first, second = ModuleNet(shape, _RandomProjection), ModuleNet(shape, _RandomProjection)
    params = first.initial_params(3)
    obs = torch.randn(1, 5, 4)
    card = PolicyCard(4, ActionSpec("discrete", 2), (), tuple(zip(first.spec.names, first.spec.shapes)), network="x:y")

    mine = first.actor(first.unpack(torch.from_numpy(params)[None]), obs)[0]
    again = second.actor(second.unpack(torch.from_numpy(params)[None]), obs)[0]
    deployed = Policy(card.with_params(params), params, network=_RandomProjection).logits_or_mean(obs[0].numpy())

    torch.testing.assert_close(mine, again, rtol=0, atol=0)
    np.testing.assert_allclose(deployed, mine.detach().numpy(), rtol=1e-6, atol=1e-6)
