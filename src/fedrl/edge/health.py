"""A device's liveness, written for probes: ``STATE_DIR/health.json``.

An agent (``fedrl client``) or follower (``fedrl act``) rewrites the file every ``PERIOD_S`` from a
thread of its own, whether or not the server answers (acting on without a server is healthy), with
what it is doing: the acting version, the decisions made, when the server last answered.
``fedrl health STATE_DIR`` (a container's HEALTHCHECK, a pod's liveness probe) reads it: a file
older than ``max_age_s`` means the process is gone or wedged; a stopped acting loop is unhealthy too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fedrl.wire import disk

HEALTH_FILE = "health.json"
PERIOD_S = 5.0
MAX_AGE_S = 60.0  # twelve missed beats: a busy 2-core device still makes one


class HealthBeat:
    """Rewrites ``state_dir/health.json`` with ``status()`` every ``period_s`` until ``stop``."""

    def __init__(self, state_dir: Path, status: Callable[[], dict], period_s: float = PERIOD_S) -> None:
        self.path, self.status, self.period_s = Path(state_dir) / HEALTH_FILE, status, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedrl-health", daemon=True)

    def start(self) -> None:
        """Write the first beat now, then every ``period_s``."""
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (the file stays, and ages)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def beat(self) -> None:
        """Write the file once."""
        record = {"at": time.time(), **self.status()}
        disk.write_atomic(self.path, (json.dumps(record) + "\n").encode(), fsync=False)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.beat()
            except OSError as exc:  # a full disk, say: try again next beat; the file ages meanwhile
                logging.getLogger("fedrl").warning("health beat not written: %s", exc)


def check(state_dir: Path, max_age_s: float = MAX_AGE_S, now: float | None = None) -> tuple[bool, str]:
    """Whether the device writing ``state_dir`` is healthy, and one line saying why (or why not)."""
    path = Path(state_dir) / HEALTH_FILE
    try:
        record = json.loads(path.read_text())
        age = (time.time() if now is None else now) - float(record["at"])
    except FileNotFoundError:
        return False, f"no {HEALTH_FILE} in {state_dir}: no agent has run with this state dir"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"{path} is unreadable: {exc}"
    facts = _facts(record, time.time() if now is None else now)
    if age > max_age_s:
        return False, f"last beat {age:.0f} s ago (more than {max_age_s:g} s): the agent is not running"
    if record.get("acting") is False:
        return False, f"the acting loop has stopped ({facts})"
    return True, f"beat {age:.0f} s ago: {facts}"


def _facts(record: dict, now: float) -> str:
    """The record's fields in words; times (``*_at``) as ages."""
    words = []
    for key, value in record.items():
        if key == "at":
            continue
        if key.endswith("_at"):
            value = "never" if value is None else f"{now - float(value):.0f} s ago"
            key = key.removesuffix("_at").replace("_", " ")
        else:
            key = key.replace("_", " ")
        words.append(f"{key} {value}")
    return ", ".join(words)
