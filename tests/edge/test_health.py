"""A device's liveness file (``health.json``): written while the device acts, whether or not a
server answers, and read by ``fedrl health STATE_DIR`` (a container's or pod's probe)."""

import time

from fedrl.edge.health import HEALTH_FILE, HealthBeat, check


def test_a_fresh_beat_is_healthy_and_says_what_the_device_does(tmp_path):
    beat = HealthBeat(tmp_path, lambda: {"acting": True, "acting_version": 3, "server_answered_at": time.time() - 5})

    beat.beat()
    healthy, message = check(tmp_path)

    assert healthy
    assert "acting version 3" in message and "server answered 5 s ago" in message


def test_an_old_beat_a_stopped_acting_loop_or_no_file_is_unhealthy(tmp_path):
    HealthBeat(tmp_path, lambda: {"acting": True}).beat()
    stale = check(tmp_path, max_age_s=60, now=time.time() + 61)
    HealthBeat(tmp_path, lambda: {"acting": False, "acting_version": 2}).beat()
    stopped = check(tmp_path)
    missing = check(tmp_path / "elsewhere")
    (tmp_path / HEALTH_FILE).write_text("{not json")
    garbled = check(tmp_path)

    assert stale == (False, "last beat 61 s ago (more than 60 s): the agent is not running")
    assert not stopped[0] and "the acting loop has stopped" in stopped[1]
    assert not missing[0] and "no agent has run with this state dir" in missing[1]
    assert not garbled[0] and "unreadable" in garbled[1]
