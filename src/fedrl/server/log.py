"""Structured logs: one JSON object per line on stderr, ``{"ts", "level", "event", ...fields}``.

Lines a machine can parse (``jq``, a log shipper) without regular expressions. Built on the
standard ``logging`` module, under the ``fedrl`` logger.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

logger = logging.getLogger("fedrl")
REFUSAL_LOG_INTERVAL_S = 10.0  # at most one refusal line per client and reason in this time
MAX_REFUSAL_KEYS = 100_000  # clients and reasons remembered at once


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: UTC ISO time, lower-case level, the event, then its fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON; values JSON cannot hold are written as ``str(value)``."""
        entry = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update((k, v) for k, v in getattr(record, "fields", {}).items() if k not in entry)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send the ``fedrl`` logger's records at ``level`` and above to ``stream`` (default stderr) as JSON lines.

    Calling it again replaces the previous setup instead of printing every line twice.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.handlers = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def log_event(event: str, level: str = "info", **fields: Any) -> None:
    """Log ``event`` (a short snake_case name, e.g. ``update_rejected``) with its fields at ``level``."""
    logger.log(logging.getLevelName(level.upper()), event, extra={"fields": fields})


class RefusalLog:
    """Refusals as log lines, at most one per ``interval_s`` for each key (a client and a reason,
    or a peer): a hostile client cannot fill the disk with them. The line after a quiet spell says
    how many were left out (``suppressed``); the metrics count every one."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._last: dict[tuple, float] = {}
        self._suppressed: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def log(self, event: str, key: tuple, level: str = "warning", **fields: Any) -> None:
        """Log ``event`` unless one with the same ``key`` was logged less than ``interval_s`` ago."""
        now = self._clock()
        with self._lock:
            if now - self._last.get(key, -math.inf) < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            if len(self._last) >= MAX_REFUSAL_KEYS:  # bounded: forget the quiet ones
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        log_event(event, level, **fields, **({"suppressed": suppressed} if suppressed else {}))
