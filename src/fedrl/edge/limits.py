"""What a device's owner allows training to use, and when the device speaks to the server.

``OwnerLimits``: torch threads for training, a nice level for the training thread only (the
acting loop keeps its priority), a resident-memory ceiling above which a task is not trained,
and a hook, ``package.module:function`` of the owner's, that says whether training may run now
(on mains power, idle, in a time window). ``Triggers``: the device asks for work only after it
has acted a number of steps or episodes since it last spoke, or when its recent return crosses a
threshold; with none set it asks whenever it is free.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedrl.edge.device import load_callable

HOOK_POLL_S = 1.0  # how often a hook that said "not now" is asked again


@dataclass(frozen=True)
class OwnerLimits:
    """The device owner's budget for training."""

    threads: int | None = None  # torch threads; None: torch's default
    nice: int = 0  # added niceness of the training thread (0: none)
    max_rss_mb: float | None = None  # no training while the process's resident memory is above this
    train_when: str | None = None  # "module:function" -> bool, asked before each training
    hook_dir: Path | None = None  # where the hook's module is looked up first


@dataclass(frozen=True)
class Triggers:
    """When the device asks for work (any condition that holds); none set: whenever it is free."""

    after_steps: int | None = None  # acted at least this many steps since it last asked
    after_episodes: int | None = None  # finished at least this many episodes since it last asked
    below_return: float | None = None  # its mean return over the last 10 episodes fell below this
    above_return: float | None = None  # ... or rose above this

    @property
    def any(self) -> bool:
        """Whether any condition is set."""
        return any(v is not None for v in (self.after_steps, self.after_episodes, self.below_return, self.above_return))

    def hold(self, steps: int, episodes: int, recent_return: float | None) -> bool:
        """Whether a condition holds, after ``steps`` and ``episodes`` since the last ask."""
        if not self.any:
            return True
        crossed = recent_return is not None and (
            (self.below_return is not None and recent_return < self.below_return)
            or (self.above_return is not None and recent_return > self.above_return)
        )
        return (
            crossed
            or (self.after_steps is not None and steps >= self.after_steps)
            or (self.after_episodes is not None and episodes >= self.after_episodes)
        )


def load_hook(name: str, search_dir: Path | None = None) -> Callable[[], bool]:
    """The owner's hook ``module:function``; ``ValueError`` naming it when it cannot be loaded."""
    return load_callable(name, search_dir, "--train-when")


def rss_mb() -> float:
    """The process's resident memory in MiB (Linux: /proc/self/status)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def nice_this_thread(increment: int) -> None:
    """Lower the calling thread's priority by ``increment`` (Linux: niceness is per thread), leaving
    the process's other threads, the acting loop among them, as they are."""
    if increment:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
