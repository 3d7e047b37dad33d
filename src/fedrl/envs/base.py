"""The shape of every fedrl environment family: batched numpy over ``(clients, envs_per_client)``.

A family is a record of pure functions (gymnax-style): ``init_state``, ``transition`` and
``observe`` take the per-client physical parameters explicitly, as an array of shape
``(C, P)`` with one row per client, so a non-IID fleet is one more batch axis. Time limits,
truncation and auto-reset live here, in one place, for every family.

Auto-reset semantics (same-step reset): when an environment's episode ends at step ``t``,
``step`` returns the reward and the ``terminated``/``truncated`` flags of that last step, the
observation that ended the episode in ``final_obs``, and in ``obs`` the first observation of a
fresh episode. The step after that is the first step of the new episode, so no step of a new
episode is ever credited to the old one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

PARAMS_STREAM = 1
HELDOUT_STREAM = 2


@dataclass(frozen=True)
class ParamRange:
    """One physical parameter of a family: its standard value and the spread at heterogeneity 1."""

    name: str
    standard: float
    low: float
    high: float
    doc: str


@dataclass(frozen=True)
class Discrete:
    """A discrete action space with ``n`` actions, numbered ``0 .. n-1``."""

    n: int


@dataclass(frozen=True)
class Continuous:
    """A continuous action space of ``dim`` actions; actions are clipped to ``[-bound, bound]``
    where ``bound`` is taken per client from the parameter named ``bound_param``."""

    dim: int
    bound_param: str


ActionSpace = Discrete | Continuous


class EnvState(NamedTuple):
    """Environment state: the family's physics record plus the step count of each episode."""

    physics: Any  # a family-specific NamedTuple of arrays shaped (C, E)
    t: np.ndarray  # (C, E) int64, steps taken in the current episode


class StepResult(NamedTuple):
    """What ``step`` returns; all arrays have leading shape ``(C, E)``."""

    state: EnvState
    obs: np.ndarray  # float32 (C, E, obs_dim): first obs of a new episode where done
    reward: np.ndarray  # float32 (C, E)
    terminated: np.ndarray  # bool (C, E): the episode reached a terminal state
    truncated: np.ndarray  # bool (C, E): the episode hit the time limit
    final_obs: np.ndarray  # float32 (C, E, obs_dim): the obs reached by this step, before any reset


@dataclass(frozen=True)
class EnvFamily:
    """A batched, heterogeneous environment family.

    ``init_state(params, n_envs, rng) -> physics``, ``transition(params, physics, action, rng)
    -> (physics, reward, terminated)`` and ``observe(params, physics) -> obs`` are pure
    functions of explicit inputs; ``params`` has shape ``(C, P)`` with columns in the order
    of ``param_ranges``. ``learner_defaults`` holds, per learner name, the hyper-parameters that
    learner takes on this family where an experiment leaves them unset (``{"ppo": {"gamma": 0.98}}``),
    so a family learns out of the box; the built-in ones come from a published sweep
    (``benchmarks/family_defaults.py``).
    """

    name: str
    description: str
    param_ranges: tuple[ParamRange, ...]
    obs_dim: int
    action_space: ActionSpace
    time_limit: int
    solved_return: float | None  # None: no return counts as solved (no target)
    init_state: Callable[..., Any]
    transition: Callable[..., tuple[Any, np.ndarray, np.ndarray]]
    observe: Callable[..., np.ndarray]
    learner_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the physical parameters, in column order."""
        return tuple(r.name for r in self.param_ranges)

    @property
    def standard_params(self) -> np.ndarray:
        """The standard (heterogeneity 0) parameter row, shape ``(P,)``."""
        return np.array([r.standard for r in self.param_ranges], dtype=np.float64)

    def column(self, params: np.ndarray, name: str) -> np.ndarray:
        """Column ``name`` of ``params`` shaped ``(C, 1)``, ready to broadcast against ``(C, E)``."""
        return params[:, self.param_names.index(name), None]


def _draw(family: EnvFamily, n_clients: int, heterogeneity: float, seed: int, stream: int) -> np.ndarray:
    if not 0.0 <= heterogeneity <= 1.0:
        raise ValueError(f"heterogeneity must be in [0, 1], got {heterogeneity}")
    if n_clients < 1:
        raise ValueError(f"n_clients must be at least 1, got {n_clients}")
    low = np.array([r.low for r in family.param_ranges])
    high = np.array([r.high for r in family.param_ranges])
    standard = family.standard_params
    u = np.random.default_rng([seed, stream]).uniform(low, high, size=(n_clients, len(low)))
    return standard + heterogeneity * (u - standard)


def sample_params(family: EnvFamily, n_clients: int, heterogeneity: float, seed: int) -> np.ndarray:
    """Draw one parameter row per client, shape ``(n_clients, P)``.

    Each parameter is ``standard + heterogeneity * (u - standard)`` with ``u`` uniform on the
    parameter's ``[low, high]``: heterogeneity 0 gives the standard environment for every
    client and heterogeneity 1 spans the full range.
    """
    return _draw(family, n_clients, heterogeneity, seed, PARAMS_STREAM)


def heldout_params(family: EnvFamily, n_clients: int, heterogeneity: float, seed: int) -> np.ndarray:
    """Draw parameters for clients never trained on, from the same distribution as
    ``sample_params`` but an independent random stream."""
    return _draw(family, n_clients, heterogeneity, seed, HELDOUT_STREAM)


def heldout_within(params: np.ndarray, n_clients: int, seed: int) -> np.ndarray:
    """Parameters for ``n_clients`` never-trained clients drawn uniformly within the per-parameter
    range of the listed clients ``params`` (``(C, P)``), on the held-out random stream."""
    low, high = params.min(axis=0), params.max(axis=0)
    return np.random.default_rng([seed, HELDOUT_STREAM]).uniform(low, high, size=(n_clients, params.shape[1]))


def params_from_rows(family: EnvFamily, rows: Sequence[dict[str, float]]) -> np.ndarray:
    """Build the ``(C, P)`` parameter array from explicit per-client settings; a parameter a
    row leaves out takes its standard value. Unknown names raise ``ValueError``."""
    out = np.tile(family.standard_params, (len(rows), 1))
    for i, row in enumerate(rows):
        for key, value in row.items():
            if key not in family.param_names:
                raise ValueError(
                    f"client {i}: unknown {family.name} parameter {key!r}; allowed: {', '.join(family.param_names)}"
                )
            out[i, family.param_names.index(key)] = float(value)
    return out


def reset(family: EnvFamily, params: np.ndarray, n_envs: int, rng: np.random.Generator) -> tuple[EnvState, np.ndarray]:
    """Start ``n_envs`` fresh episodes for every client; returns the state and first obs."""
    physics = family.init_state(params, n_envs, rng)
    t = np.zeros((params.shape[0], n_envs), dtype=np.int64)
    return EnvState(physics, t), family.observe(params, physics)


def select(mask: np.ndarray, new: Any, old: Any) -> Any:
    """Field by field ``where(mask, new, old)`` over two records of ``(C, E, ...)`` arrays."""
    fields = []
    for a, b in zip(new, old):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))
        fields.append(np.where(m, a, b))
    return type(old)(*fields)


def step(
    family: EnvFamily,
    params: np.ndarray,
    state: EnvState,
    action: np.ndarray,
    rng: np.random.Generator,
) -> StepResult:
    """Advance every environment one step, truncate at the time limit, and auto-reset the
    environments whose episode ended (see the module docstring for the exact semantics)."""
    physics, reward, terminated = family.transition(params, state.physics, action, rng)
    t = state.t + 1
    truncated = (t >= family.time_limit) & ~terminated
    done = terminated | truncated
    final_obs = family.observe(params, physics)
    obs = final_obs
    if done.any():
        fresh = family.init_state(params, t.shape[1], rng)
        physics = select(done, fresh, physics)
        t = np.where(done, 0, t)
        obs = family.observe(params, physics)
    return StepResult(EnvState(physics, t), obs, reward.astype(np.float32), terminated, truncated, final_obs)


def take_clients(state: EnvState, rows: np.ndarray) -> EnvState:
    """The state of the clients at indices ``rows`` (first axis)."""
    return EnvState(type(state.physics)(*(f[rows] for f in state.physics)), state.t[rows])


def put_clients(state: EnvState, rows: np.ndarray, part: EnvState) -> EnvState:
    """A copy of ``state`` with the clients at ``rows`` replaced by ``part``."""
    physics = []
    for whole, piece in zip(state.physics, part.physics):
        whole = whole.copy()
        whole[rows] = piece
        physics.append(whole)
    t = state.t.copy()
    t[rows] = part.t
    return EnvState(type(state.physics)(*physics), t)


def state_to_arrays(state: EnvState) -> dict[str, np.ndarray]:
    """Flatten a state into named arrays (for checkpoints)."""
    out = {f"physics.{k}": np.ascontiguousarray(v) for k, v in state.physics._asdict().items()}
    out["t"] = np.ascontiguousarray(state.t)
    return out


def state_from_arrays(family: EnvFamily, params: np.ndarray, arrays: dict[str, np.ndarray]) -> EnvState:
    """Inverse of ``state_to_arrays``; the physics record type comes from ``family``."""
    template = family.init_state(params[:1], 1, np.random.default_rng(0))
    physics = type(template)(*(arrays[f"physics.{k}"] for k in template._fields))
    return EnvState(physics, arrays["t"])
