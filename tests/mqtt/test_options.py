"""The MQTT options of ``fedrl server`` and ``fedrl client``: TLS is needed off loopback."""

from pathlib import Path

import pytest

from fedrl.cli.mqtt import broker_options


def test_plain_text_to_a_broker_is_refused_off_loopback_and_tls_needs_no_insecure():
    with pytest.raises(ValueError, match="not a loopback address"):
        broker_options("broker.example.org:1883", "f", None, None, None, None, None, True, "5")
    with pytest.raises(ValueError, match="--insecure"):
        broker_options("broker.example.org:8883", "f", None, None, Path("ca.pem"), None, None, True, "5")
    with pytest.raises(ValueError, match="3.1.1"):
        broker_options("127.0.0.1:1883", "f", None, None, None, None, None, True, "4")


def test_broker_options_carry_the_login_fleet_and_version():
    options = broker_options(
        "broker.example.org:8883", "plant", "dev-1", "pw", Path("ca.pem"), None, None, False, "3.1.1"
    )
    assert (options.host, options.port, options.fleet, options.username, options.mqtt5) == (
        "broker.example.org",
        8883,
        "plant",
        "dev-1",
        False,
    )
    assert options.topics.up("dev-1") == "fedrl/plant/clients/dev-1/up"
