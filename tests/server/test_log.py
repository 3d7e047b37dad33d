"""Structured logs: one parseable JSON object per line on stderr."""

import json
import logging

import pytest

from fedrl.server.log import RefusalLog, log_event, logger, setup_logging


@pytest.fixture(autouse=True)
def restore_logger():
    """Leave the ``fedrl`` logger as it was, so no later test writes to a closed capture."""
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers, logger.propagate = handlers, propagate
    logger.setLevel(level)


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_each_event_is_one_json_line_with_time_level_event_and_fields(capsys):
    setup_logging()
    log_event("update_accepted", client="robot-1", round=3, norm=0.5)
    log_event("update_rejected", level="warning", client="robot-2", reason="INVALID_ARGUMENT")
    first, second = _lines(capsys)
    assert list(first)[:3] == ["ts", "level", "event"]
    assert first["ts"].endswith("+00:00")
    assert first == {
        "ts": first["ts"],
        "level": "info",
        "event": "update_accepted",
        "client": "robot-1",
        "round": 3,
        "norm": 0.5,
    }
    assert (second["level"], second["event"], second["reason"]) == ("warning", "update_rejected", "INVALID_ARGUMENT")


def test_the_level_filters_and_setting_up_twice_prints_once(capsys):
    setup_logging("warning")
    setup_logging("warning")
    log_event("heartbeat", level="debug", client="robot-1")
    log_event("disk_low", level="error", free_bytes=10)
    assert [line["event"] for line in _lines(capsys)] == ["disk_low"]


def test_values_json_cannot_hold_and_exceptions_still_make_one_line(capsys, tmp_path):
    setup_logging()
    log_event("checkpoint_written", path=tmp_path)
    try:
        raise OSError("disk full")
    except OSError:
        logging.getLogger("fedrl.server").exception("checkpoint_failed")
    written, failed = _lines(capsys)
    assert written["path"] == str(tmp_path)
    assert failed["event"] == "checkpoint_failed" and "OSError: disk full" in failed["error"]


def test_refusals_are_logged_once_per_client_and_reason_in_an_interval(capsys):
    # Prepare: a clock the test moves
    setup_logging()
    now = [0.0]
    refusals = RefusalLog(interval_s=10.0, clock=lambda: now[0])

    # Execute: a burst of 100 refusals of one client, one of another; then the interval passes
    for _ in range(100):
        refusals.log("update_rejected", ("mallory", "INVALID_ARGUMENT"), client="mallory")
    refusals.log("update_rejected", ("alice", "INVALID_ARGUMENT"), client="alice")
    now[0] = 10.5
    refusals.log("update_rejected", ("mallory", "INVALID_ARGUMENT"), client="mallory")

    # Assert: three lines, the last saying how many were left out
    lines = _lines(capsys)
    assert [(line["client"], line.get("suppressed")) for line in lines] == [
        ("mallory", None),
        ("alice", None),
        ("mallory", 99),
    ]
