"""Structured logs: one JSON object per line on stderr, ``{"ts", "level", "event", ...fields}``.

Lines a machine can parse (``jq``, a log shipper) without regular expressions. Built on the
standard ``logging`` module, under the ``fedrl`` logger.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any, TextIO

logger = logging.getLogger("fedrl")


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
