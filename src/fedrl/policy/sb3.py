"""Stable-Baselines3 interop: a fedrl policy as an SB3 PPO (or A2C) model, and an SB3 model as a
fedrl policy (``load_policy("model.zip")``, hence ``fedrl server --init-from model.zip`` and
``fedrl export``: where torch and stable-baselines3 are installed, as with ``fedrl[train]``; the
torch-free runtime reads the ``.npz`` that ``fedrl export`` writes from it).

fedrl's actor-critic network is SB3's ``MlpPolicy`` with separate actor and critic towers of the
same sizes (``net_arch=dict(pi=hidden, vf=hidden)``), tanh activations and, for continuous actions,
a state-independent log-std; the tensors map one to one (fedrl keeps a layer's weight as
``(in, out)``, torch as ``(out, in)``). SB3 models of another shape (ReLU, shared layers, a CNN,
image observations) are refused, naming what differs. Importing this module imports nothing
heavy; its functions import torch, Gymnasium and stable-baselines3 when called.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from fedrl.policy.card import ActionSpec, PolicyCard
from fedrl.policy.runtime import Policy

ALGORITHMS = ("PPO", "A2C")


def _tower(prefix: str, sizes: list[int]) -> list[tuple[str, tuple[int, ...]]]:
    layout = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layout += [(f"{prefix}.{i}.weight", (n_in, n_out)), (f"{prefix}.{i}.bias", (n_out,))]
    return layout


def _layout(obs_dim: int, hidden: list[int], n_actions: int, continuous: bool) -> tuple:
    """fedrl's flat layout for an actor-critic of these sizes (as ``agents.nets.policy_spec``)."""
    layout = _tower("actor", [obs_dim, *hidden, n_actions])
    if continuous:
        layout.append(("actor.log_std", (n_actions,)))
    return tuple(layout + _tower("critic", [obs_dim, *hidden, 1]))


def _sb3_names(prefix: str, n_layers: int) -> list[str]:
    """SB3's module for fedrl's layer ``i`` of the actor (``pi``) or critic (``vf``) tower."""
    net, head = ("policy_net", "action_net") if prefix == "actor" else ("value_net", "value_net")
    return [f"mlp_extractor.{net}.{2 * i}" for i in range(n_layers - 1)] + [head]


def from_sb3(model_or_path: Any) -> Policy:
    """The fedrl policy of an SB3 PPO/A2C model (or its saved ``.zip``); ``ValueError`` naming what
    does not fit fedrl's network."""
    model = _load(model_or_path) if isinstance(model_or_path, str | Path) else model_or_path
    policy, where = model.policy, str(model_or_path) if isinstance(model_or_path, str | Path) else "the SB3 model"
    obs_space, action_space = policy.observation_space, policy.action_space
    if len(getattr(obs_space, "shape", ()) or ()) != 1:
        raise ValueError(f"{where}: observations of shape {obs_space.shape}; fedrl's networks take flat vectors")
    kind = type(action_space).__name__
    if kind not in ("Discrete", "Box"):
        raise ValueError(f"{where}: a {kind} action space; fedrl's policies take Discrete or Box actions")
    continuous = kind == "Box"
    if continuous:
        high = np.asarray(action_space.high, dtype=np.float64)
        if not np.allclose(np.asarray(action_space.low), -high) or not np.isfinite(high).all():
            raise ValueError(f"{where}: actions must lie in a symmetric, finite box [-b, b], got {action_space}")
        action = ActionSpec("continuous", int(high.size), tuple(float(b) for b in high))
    else:
        action = ActionSpec("discrete", int(action_space.n))
    state = {name: tensor.detach().cpu().numpy() for name, tensor in policy.state_dict().items()}
    hidden = _hidden(policy, state, where)
    obs_dim = int(obs_space.shape[0])
    layout = _layout(obs_dim, hidden, action.n, continuous)
    tensors = {}
    for prefix in ("actor", "critic"):
        for i, module in enumerate(_sb3_names(prefix, len(hidden) + 1)):
            tensors[f"{prefix}.{i}.weight"] = state[f"{module}.weight"].T
            tensors[f"{prefix}.{i}.bias"] = state[f"{module}.bias"]
    if continuous:
        tensors["actor.log_std"] = state["log_std"]
    params = np.concatenate([np.asarray(tensors[name], np.float32).reshape(-1) for name, _ in layout])
    card = PolicyCard(obs_dim, action, tuple(hidden), layout, experiment="stable-baselines3")
    return Policy(card.with_params(params), params)


def _hidden(policy: Any, state: dict[str, np.ndarray], where: str) -> list[int]:
    """The hidden sizes of ``policy``'s towers; ``ValueError`` unless it is an MlpPolicy with tanh,
    separate actor and critic towers of equal sizes and no shared layers."""
    import torch

    if not isinstance(policy.activation_fn(), torch.nn.Tanh):
        raise ValueError(
            f"{where}: its activation is {policy.activation_fn.__name__}; fedrl's networks use tanh "
            "(train it with policy_kwargs=dict(activation_fn=torch.nn.Tanh))"
        )
    sizes = {
        prefix: [
            state[f"mlp_extractor.{net}.{i}.weight"].shape[0]
            for i in range(0, 64, 2)
            if f"mlp_extractor.{net}.{i}.weight" in state
        ]
        for prefix, net in (("pi", "policy_net"), ("vf", "value_net"))
    }
    shared = [name for name in state if name.startswith("mlp_extractor.shared_net")]
    if shared or sizes["pi"] != sizes["vf"] or not sizes["pi"]:
        raise ValueError(
            f"{where}: its actor layers are {sizes['pi']} and its critic's {sizes['vf']}"
            f"{' with shared layers' if shared else ''}; fedrl's networks have separate towers of equal sizes "
            "(policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64])))"
        )
    return sizes["pi"]


def _load(path: str | Path) -> Any:
    """An SB3 PPO or A2C model saved at ``path``, whichever it is."""
    stable_baselines3 = _sb3(path)

    errors = []
    for name in ALGORITHMS:
        try:
            return getattr(stable_baselines3, name).load(str(path), device="cpu")
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            errors.append(f"{name}: {exc}")
    raise ValueError(f"{path}: not an SB3 {' or '.join(ALGORITHMS)} model ({'; '.join(errors)})")


def to_sb3(policy: Policy, env: Any = None, algorithm: str = "PPO", **kwargs: Any) -> Any:
    """An SB3 ``algorithm`` model (PPO or A2C) whose policy is ``policy`` (``fedrl.load_policy``'s
    result), built for ``env`` (default: a stand-in with the policy's spaces, enough to predict and
    to save; give the real env to train on). ``kwargs`` go to the algorithm (learning rate, ...)."""
    stable_baselines3 = _sb3("an SB3 model")
    import torch

    card = policy.card
    if card.network:
        raise ValueError(f"this policy runs your network {card.network!r}; only fedrl's MLP maps onto an SB3 MlpPolicy")
    if card.q_values or card.obs_norm is not None:
        kind = "a Q-network (DQN)" if card.q_values else "observation normalisation, which SB3 keeps outside the policy"
        raise ValueError(f"this policy has {kind}; only actor-critic policies without it map onto an SB3 MlpPolicy")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r}: one of {', '.join(ALGORITHMS)}")
    hidden = list(card.hidden)
    policy_kwargs = {"net_arch": {"pi": hidden, "vf": hidden}, "activation_fn": torch.nn.Tanh}
    model = getattr(stable_baselines3, algorithm)(
        "MlpPolicy", env or _standin(card), policy_kwargs=policy_kwargs, device="cpu", **kwargs
    )
    slices, params = card.slices(), np.asarray(policy.params, np.float32)
    state = {}
    for prefix in ("actor", "critic"):
        for i, module in enumerate(_sb3_names(prefix, len(hidden) + 1)):
            weight, shape = slices[f"{prefix}.{i}.weight"]
            bias, _ = slices[f"{prefix}.{i}.bias"]
            state[f"{module}.weight"] = torch.from_numpy(params[weight].reshape(shape).T.copy())
            state[f"{module}.bias"] = torch.from_numpy(params[bias].copy())
    if card.action.kind == "continuous":
        state["log_std"] = torch.from_numpy(params[slices["actor.log_std"][0]].copy())
    model.policy.load_state_dict(state, strict=True)
    return model


def _sb3(what: Any) -> Any:
    """The stable_baselines3 package; ``ValueError`` saying how to install it when it is missing."""
    try:
        import stable_baselines3
    except ImportError:
        raise ValueError(
            f"{what}: Stable-Baselines3 models need torch and stable-baselines3: pip install 'fedrl[train]'"
        ) from None
    return stable_baselines3


def _standin(card: PolicyCard) -> Any:
    """A Gymnasium env with ``card``'s spaces that is never stepped (SB3 needs one to build a model)."""
    import gymnasium as gym

    obs = gym.spaces.Box(-np.inf, np.inf, (card.obs_dim,), np.float32)
    if card.action.kind == "discrete":
        actions: gym.Space = gym.spaces.Discrete(card.action.n)
    else:
        bound = np.asarray(card.action.bound, np.float32)
        actions = gym.spaces.Box(-bound, bound, dtype=np.float32)

    class StandIn(gym.Env):
        observation_space, action_space = obs, actions

        def reset(self, seed=None, options=None):
            return np.zeros(card.obs_dim, np.float32), {}

        def step(self, action):
            raise RuntimeError("a stand-in for the policy's spaces: give to_sb3 the real env to train")

    return StandIn()
