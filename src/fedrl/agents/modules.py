"""A user's own torch network as the towers of a client-batched policy.

``learner.network: "module:function"`` names a factory called as ``function(obs_dim, n_out)``
that returns a ``torch.nn.Module`` mapping observations ``(N, obs_dim)`` to ``(N, n_out)``: the
actor (``n_out`` logits, Gaussian means or Q values) and, for learners with a critic, a second
instance with ``n_out = 1``. Its parameters become the flat vector's ``actor.*`` and ``critic.*``
tensors (plus ``actor.log_std`` for continuous actions, as in fedrl's MLP), so federation,
partial federation, compression and every strategy treat them as they treat the MLP's.

Every client runs the same module with its own parameters: ``torch.func.functional_call`` under
``torch.func.vmap`` over the client axis, so one client's output and gradient never depend on
another's. The modules run in eval mode: buffers are the factory's own (made with torch seeded by
0, so every copy holds the same) and are neither trained nor federated, and batch normalisation,
whose statistics would mix clients, is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, vmap

from fedrl.agents.nets import BatchedNet, PolicyShape, one_thread
from fedrl.core.params import ParamSpec
from fedrl.envs.gym_adapter import LIBRARIES, blame

NetworkFactory = Callable[[int, int], torch.nn.Module]
TORCH = Path(torch.__file__).resolve().parent


def build_module(factory: NetworkFactory, obs_dim: int, n_out: int) -> torch.nn.Module:
    """``factory(obs_dim, n_out)`` in eval mode, checked: a module with parameters, no batch
    normalisation, mapping a float32 ``(2, obs_dim)`` batch to ``(2, n_out)``; ``ValueError``
    naming what is wrong otherwise (for an exception raised in the user's code, with its file and line)."""
    try:
        return _checked(factory(obs_dim, n_out), obs_dim, n_out)
    except ValueError:
        raise
    except Exception as exc:  # the user's code: anything from a typo to a shape mismatch inside torch
        raise ValueError(str(blame("the network", exc, (*LIBRARIES, TORCH)))) from None


def _checked(module: torch.nn.Module, obs_dim: int, n_out: int) -> torch.nn.Module:
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"must return a torch.nn.Module, got {type(module).__name__}")
    if not any(True for _ in module.parameters()):
        raise ValueError("returned a module without parameters: there is nothing to train")
    norms = [name for name, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise ValueError(
            f"holds batch normalisation ({', '.join(norms)}), whose running statistics would mix clients "
            "and are not federated; use torch.nn.LayerNorm"
        )
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(2, obs_dim))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_out):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"maps a (2, {obs_dim}) batch to {shape}, not (2, {n_out})")
    return module


def module_shapes(prefix: str, module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``prefix.name`` -> shape of every parameter of ``module``, in its registration order."""
    return {f"{prefix}.{name}": tuple(p.shape) for name, p in module.named_parameters()}


class ModuleNet(BatchedNet):
    """The towers of ``shape`` as modules made by a user's ``factory`` (see the module docstring)."""

    def __init__(self, shape: PolicyShape, factory: NetworkFactory):
        self.shape, self.factory = shape, factory
        self.modules = self._build()
        shapes = {}
        for prefix, module in self.modules.items():
            shapes.update(module_shapes(prefix, module))
            if prefix == "actor" and shape.continuous:
                if "actor.log_std" in shapes:
                    raise ValueError("the actor has a parameter named 'log_std', the name fedrl keeps for its own")
                shapes["actor.log_std"] = (shape.action_dim,)
        self.spec = ParamSpec.from_shapes(shapes)
        self._names = {prefix: [name for name in shapes if name.startswith(prefix + ".")] for prefix in self.modules}
        self._names["actor"] = [name for name in self._names["actor"] if name != "actor.log_std"]
        self._check_batched()

    def _check_batched(self) -> None:
        """One forward and backward pass for two clients, so that a module ``vmap`` cannot run
        (``.item()``, control flow on values, in-place writes to its input) fails here, named."""
        flat = torch.from_numpy(self.initial_params(0)).repeat(2, 1).requires_grad_(True)
        obs = torch.zeros(2, 3, self.shape.obs_dim)
        try:
            heads = self.heads(self.unpack(flat), obs)
            (heads.actor.sum() + (0 if heads.value is None else heads.value.sum())).backward()
        except Exception as exc:  # the user's code under torch.func.vmap
            raise ValueError(
                str(blame("the network, run for each client by torch.func.vmap,", exc, (*LIBRARIES, TORCH)))
            ) from None

    def _build(self, seed: int = 0) -> dict[str, torch.nn.Module]:
        """Fresh modules made with torch seeded by ``seed`` on one thread (torch's random state
        restored afterwards): the modules that run are made with 0, as every saved policy's are
        (``fedrl.policy.module_actor``), so buffers the factory draws are the same everywhere."""
        with torch.random.fork_rng(devices=[]), one_thread():
            torch.manual_seed(seed)
            modules = {"actor": build_module(self.factory, self.shape.obs_dim, self.shape.action_dim)}
            if self.shape.critic:
                modules["critic"] = build_module(self.factory, self.shape.obs_dim, 1)
        return modules

    def initial_params(self, seed: int) -> np.ndarray:
        """The factory's own initialisation of fresh modules made with ``seed``; log-std starts at zero."""
        modules = self._build(seed)
        tensors = {name: np.zeros(dims, np.float32) for name, dims in zip(self.spec.names, self.spec.shapes)}
        for prefix, module in modules.items():
            for name, p in module.named_parameters():
                tensors[f"{prefix}.{name}"] = p.detach().numpy().astype(np.float32)
        return self.spec.flatten(tensors)

    def _tower(self, w: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
        module = self.modules[prefix]
        params = {name.removeprefix(prefix + "."): w[name] for name in self._names[prefix]}
        return vmap(lambda p, obs: functional_call(module, p, (obs,)))(params, x)
