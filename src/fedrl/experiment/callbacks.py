"""Hooks into a training loop, the same for the simulator (``fedrl run``) and the server
(``fedrl server``): after each round, a ``RoundReport``; at the end, ``close``.

A callback is any object with ``on_round(report)`` and ``close()``; ``fedrl run --callback
module:factory`` (and ``fedrl server --callback``) calls ``factory(log_dir)`` for one, so a user's
own logger (Weights & Biases, MLflow, a database) plugs in without editing fedrl.
``TensorBoardCallback`` is the one every run and server has by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fedrl.experiment.config import ConfigError, import_function


@dataclass(frozen=True)
class RoundReport:
    """What one round produced: finite scalars by TensorBoard tag (``return/mean``,
    ``traffic/uplink_bytes``, ...), the env steps so far (None where not counted) and each
    evaluated client's return under the global policy (None when the round was not evaluated)."""

    round: int
    scalars: dict[str, float]
    env_steps: int | None = None
    client_returns: np.ndarray | None = field(default=None, compare=False)


class Callback(Protocol):
    """Told about every round, then closed."""

    def on_round(self, report: RoundReport) -> None:
        """Called after each round is recorded."""

    def close(self) -> None:
        """Called once, when the loop ends (finished, interrupted or failed)."""


def finite(scalars: dict[str, float | int | None]) -> dict[str, float]:
    """``scalars`` without the missing and non-finite values (a round that measured nothing there)."""
    return {k: float(v) for k, v in scalars.items() if v is not None and np.isfinite(v)}


class TensorBoardCallback:
    """TensorBoard event files in ``log_dir``, written by tensorboardX (no TensorFlow needed; the
    ``tensorboard`` viewer is optional): every scalar per round; returns (``return/*``) also per env
    step under ``return_by_env_step/*``; a histogram of the clients' returns. ``purge_step``: events
    of that round and later are dropped (a run resumed from a checkpoint rewrites them)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from tensorboardX import SummaryWriter

        self.log_dir = Path(log_dir)
        # the suffix keeps a resumed run's file apart from (and sorted after) one begun in the same second
        suffix = f".from-round-{purge_step or 0:06d}"
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step, flush_secs=10, filename_suffix=suffix)

    def on_round(self, report: RoundReport) -> None:
        """Write the round's scalars and histogram."""
        for tag, value in report.scalars.items():
            self._writer.add_scalar(tag, value, report.round)
            if tag.startswith("return/") and report.env_steps is not None:
                self._writer.add_scalar(tag.replace("return/", "return_by_env_step/", 1), value, report.env_steps)
        returns = report.client_returns
        if returns is not None and np.isfinite(returns).any():
            self._writer.add_histogram("clients/return", returns[np.isfinite(returns)], report.round)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


def load_callbacks(specs: Sequence[str], log_dir: Path) -> list[Callback]:
    """The callbacks ``module:factory`` names, each made as ``factory(log_dir)``; ``ConfigError``
    naming the one that cannot be loaded or lacks ``on_round``/``close``."""
    callbacks = []
    for spec in specs:
        try:
            factory = import_function(spec, None, "--callback")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            callback = factory(log_dir)
        except Exception as exc:
            raise ConfigError(f"--callback {spec}: {type(exc).__name__}: {exc}") from None
        missing = [name for name in ("on_round", "close") if not callable(getattr(callback, name, None))]
        if missing:
            raise ConfigError(f"--callback {spec}: what it made has no {' or '.join(missing)}()")
        callbacks.append(callback)
    return callbacks
