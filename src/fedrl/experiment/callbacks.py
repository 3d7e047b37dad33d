"""Hooks into a training loop, the same for the simulator (``fedrl run``) and the server
(``fedrl server``): after each round, a ``RoundReport``; at the end, ``close``.

A callback is any object with ``on_round(report)`` and ``close()``, and optionally
``on_evaluation(report)`` (rounds whose global policy was evaluated: the simulator's evaluation
rounds, the server's gate) and ``on_deploy(deployed)`` (a new global version: every round's
aggregate in simulation, a promoted candidate on the server), as SB3's callbacks are told about
steps, evaluations and new best models. ``tell`` calls them in that order. ``fedrl run --callback
module:factory`` (and ``fedrl server --callback``) calls ``factory(log_dir)`` for one (the run or
state directory, which exists by then), so a user's own logger (Weights & Biases, MLflow, a
database) plugs in without editing fedrl.
``TensorBoardCallback`` is the one every run and server has by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fedrl.envs.gym_adapter import blame
from fedrl.experiment.config import ConfigError, import_function
from fedrl.experiment.usercode import THEIRS_NOT
from fedrl.policy.card import PolicyCard


@dataclass(frozen=True)
class Deployed:
    """A new global version: its number, flat parameters and card (``fedrl.policy.Policy(card,
    params)`` acts with it; ``fedrl.policy.files.save_safetensors`` keeps it)."""

    version: int
    params: np.ndarray = field(compare=False)
    card: PolicyCard


@dataclass(frozen=True)
class RoundReport:
    """What one round produced: finite scalars by TensorBoard tag (``return/mean``,
    ``traffic/uplink_bytes``, ...), the env steps so far (None where not counted), each evaluated
    client's return under the global policy (None when not measured per client), whether the global
    policy was evaluated, the version it deployed (None when it deployed none), and which clients
    the returns are of when the evaluation sampled some (``eval.clients``; None: client i is i)."""

    round: int
    scalars: dict[str, float]
    env_steps: int | None = None
    client_returns: np.ndarray | None = field(default=None, compare=False)
    evaluated: bool = False
    deployed: Deployed | None = None
    client_ids: np.ndarray | None = field(default=None, compare=False)  # whose returns, when a sample; None: all


class Callback(Protocol):
    """Told about every round, then closed."""

    def on_round(self, report: RoundReport) -> None:
        """Called after each round is recorded."""

    def close(self) -> None:
        """Called once, when the loop ends (finished, interrupted or failed)."""


def tell(callback: Callback, report: RoundReport) -> None:
    """Tell ``callback`` about a round: ``on_round``, then ``on_evaluation`` if the round evaluated
    the global policy and ``on_deploy`` if it deployed a version, each when the callback has it.
    What the callback raises comes out as one ``UserCodeError`` line naming its method and line."""
    calls = [("on_round", report)]
    if report.evaluated:
        calls.append(("on_evaluation", report))
    if report.deployed is not None:
        calls.append(("on_deploy", report.deployed))
    for method, argument in calls:
        hook = getattr(callback, method, None)
        if not callable(hook):
            continue
        try:
            hook(argument)
        except Exception as exc:  # the user's code
            raise blame(f"callback {type(callback).__name__}.{method}", exc, THEIRS_NOT) from None


def finite(scalars: dict[str, float | int | None]) -> dict[str, float]:
    """``scalars`` without the missing and non-finite values (a round that measured nothing there)."""
    return {k: float(v) for k, v in scalars.items() if v is not None and np.isfinite(v)}


class TensorBoardCallback:
    """TensorBoard event files in ``log_dir``, written by tensorboardX (no TensorFlow needed; the
    ``tensorboard`` viewer is optional): every scalar per round; returns (``return/*``) also per env
    step, in the ``by_env_step`` run beside it; a histogram of the clients' returns. ``purge_step``
    and ``purge_env_step``: events of that round (env step) and later are dropped, as a run resumed
    from a checkpoint rewrites them. (TensorBoard purges every tag of a file at its purge step, so
    the two step scales need files of their own.)"""

    def __init__(self, log_dir: Path, purge_step: int | None = None, purge_env_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self._writer = _writer(self.log_dir, purge_step)
        self._by_env_step = _writer(self.log_dir / "by_env_step", purge_env_step)

    def on_round(self, report: RoundReport) -> None:
        """Write the round's scalars and histogram."""
        for tag, value in report.scalars.items():
            self._writer.add_scalar(tag, value, report.round)
            if tag.startswith("return/") and report.env_steps is not None:
                self._by_env_step.add_scalar(tag, value, report.env_steps)
        returns = report.client_returns
        if returns is not None and np.isfinite(returns).any():
            self._writer.add_histogram("clients/return", returns[np.isfinite(returns)], report.round)
        self._writer.flush()
        self._by_env_step.flush()

    def close(self) -> None:
        """Flush and close the event files."""
        self._writer.close()
        self._by_env_step.close()


def _writer(log_dir: Path, purge_step: int | None):
    """A tensorboardX writer into ``log_dir``; the file name's suffix keeps a resumed run's file apart
    from (and sorted after) one begun in the same second."""
    from tensorboardX import SummaryWriter

    suffix = f".from-step-{purge_step or 0:09d}"
    return SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=10, filename_suffix=suffix)


Factory = tuple[str, Callable[[Path], Callback]]  # "module:factory" and what it names


def callback_factories(specs: Sequence[str]) -> list[Factory]:
    """The factories ``module:factory`` names, imported now (before anything is created), each with
    its name; ``ConfigError`` naming the one that cannot be loaded."""
    try:
        return [(spec, import_function(spec, None, "--callback")) for spec in specs]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def make_callbacks(factories: Sequence[Factory], log_dir: Path) -> list[Callback]:
    """One callback per factory, made as ``factory(log_dir)`` (the folder exists by then);
    ``ConfigError`` naming the one that fails or lacks ``on_round``/``close``, the others closed."""
    made: list[Callback] = []
    try:
        for spec, factory in factories:
            try:
                callback = factory(log_dir)
            except Exception as exc:
                raise ConfigError(f"--callback {spec}: {type(exc).__name__}: {exc}") from None
            missing = [name for name in ("on_round", "close") if not callable(getattr(callback, name, None))]
            if missing:
                raise ConfigError(f"--callback {spec}: what it made has no {' or '.join(missing)}()")
            made.append(callback)
    except ConfigError:
        for callback in made:
            callback.close()
        raise
    return made
