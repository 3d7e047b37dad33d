"""The transitions a device's acting loop made, kept for learning: a bounded record on disk.

The acting loop ``add``s every transition with the tag of the policy that chose it (its version;
a personal copy's is negative, ``fedrl.edge.acting.Policy.tag``); training ``take``s
the latest transitions of the version it starts from that it has not learned from yet (on-policy
learners need experience of the policy they improve) and marks them used once the update made from
them is on disk. The record is a ring
of ``capacity`` transitions; ``save`` writes it to the state directory (the agent does so between
rounds and before training), so a killed device keeps its experience up to the last save.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from fedrl.core.experience import Experience
from fedrl.wire import disk

EXPERIENCE_FILE = "experience.safetensors"
_FIELDS = (*Experience._fields, "version")
_EMPTY = np.iinfo(np.int64).min  # the tag of a slot never written


class Recorder:
    """A ring of the latest ``capacity`` transitions, each with the version that chose it."""

    def __init__(self, capacity: int, obs_dim: int, action_shape: tuple[int, ...], action_dtype: type) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._arrays = {
            "obs": np.zeros((capacity, obs_dim), np.float32),
            "action": np.zeros((capacity, *action_shape), action_dtype),
            "reward": np.zeros(capacity, np.float32),
            "terminated": np.zeros(capacity, bool),
            "truncated": np.zeros(capacity, bool),
            "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "version": np.full(capacity, _EMPTY, np.int64),
        }
        self.total = 0  # transitions ever added
        self._run_start = 0  # where the latest run of one version began
        self._used = 0  # transitions before this were learned from

    def add(self, obs, action, reward, terminated, truncated, next_obs, version: int) -> None:
        """Record one transition (called by the acting loop)."""
        with self._lock:
            i = self.total % self.capacity
            if self.total and self._arrays["version"][(self.total - 1) % self.capacity] != version:
                self._run_start = self.total
            for name, value in zip(_FIELDS, (obs, action, reward, terminated, truncated, next_obs, version)):
                self._arrays[name][i] = value
            self.total += 1

    def _fresh_start(self, version: int) -> int | None:
        last = (self.total - 1) % self.capacity
        if self.total == 0 or self._arrays["version"][last] != version:
            return None
        return max(self._run_start, self._used, self.total - self.capacity)

    def fresh(self, version: int) -> tuple[int, int]:
        """``(steps, episodes ended)`` recorded with ``version`` that no round has learned from."""
        with self._lock:
            start = self._fresh_start(version)
            if start is None:
                return 0, 0
            idx = np.arange(start, self.total) % self.capacity
            ended = self._arrays["terminated"][idx] | self._arrays["truncated"][idx]
            return len(idx), int(ended.sum())

    def take(self, version: int, steps: int | None = None) -> tuple[Experience, int]:
        """The latest ``steps`` (all, with None) fresh transitions of ``version``, in order, and the
        count to pass to ``mark_used`` once they have been learned from (until then they stay fresh:
        a device killed while training learns from them again)."""
        with self._lock:
            start = self._fresh_start(version)
            start = self.total if start is None else start
            if steps is not None:
                start = max(start, self.total - steps)
            idx = np.arange(start, self.total) % self.capacity
            return Experience(*(self._arrays[name][idx].copy() for name in Experience._fields)), self.total

    def mark_used(self, upto: int) -> None:
        """Transitions recorded before ``upto`` (a count ``take`` gave) are no longer fresh."""
        with self._lock:
            self._used = max(self._used, upto)

    def save(self, state_dir: Path) -> None:
        """Write the record durably to ``state_dir``."""
        with self._lock:
            arrays = {name: array.copy() for name, array in self._arrays.items()}
            header = {"total": self.total, "run_start": self._run_start, "used": self._used}
        disk.save_record(Path(state_dir) / EXPERIENCE_FILE, arrays, header)

    def restore(self, state_dir: Path) -> bool:
        """Take up a record saved in ``state_dir`` of the same shapes; whether there was one
        (``ValueError`` when the file is unreadable)."""
        record = disk.load_record(Path(state_dir) / EXPERIENCE_FILE)
        if record is None:
            return False
        arrays, header = record
        fits = arrays.keys() == self._arrays.keys() and all(
            arrays[k].shape == v.shape and arrays[k].dtype == v.dtype for k, v in self._arrays.items()
        )
        if not fits:
            return False
        with self._lock:
            self._arrays = arrays
            self.total, self._run_start, self._used = header["total"], header["run_start"], header["used"]
        return True
