"""The fleet's topic layout, and the example ACL that keeps each device to its own topics."""

from pathlib import Path

import pytest

from fedrl.wire.broker import acl_text
from fedrl.wire.mqtt_topics import Topics

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mosquitto"


def test_every_topic_of_a_device_names_the_fleet_and_the_device():
    topics = Topics("plant-7")
    assert topics.model == "fedrl/plant-7/model"
    assert [topics.up("dev-1"), topics.down("dev-1"), topics.status("dev-1")] == [
        "fedrl/plant-7/clients/dev-1/up",
        "fedrl/plant-7/clients/dev-1/down",
        "fedrl/plant-7/clients/dev-1/status",
    ]
    assert topics.every("up") == "fedrl/plant-7/clients/+/up"
    assert topics.client_of("fedrl/plant-7/clients/dev-1/up") == "dev-1"


@pytest.mark.parametrize(
    "topic", ["fedrl/other/clients/dev-1/up", "fedrl/plant-7/model", "fedrl/plant-7/clients/dev-1/x"]
)
def test_a_topic_of_another_fleet_or_kind_has_no_client(topic):
    with pytest.raises(ValueError):
        Topics("plant-7").client_of(topic)


@pytest.mark.parametrize("name", ["a/b", "dev+", "#", ""])
def test_names_that_would_break_the_layout_are_refused(name):
    with pytest.raises(ValueError):
        Topics(name)
    with pytest.raises(ValueError):
        Topics("ok").up(name)


def test_the_example_acl_is_the_one_the_tests_run_with():
    assert (EXAMPLES / "acl").read_text() == acl_text("fedrl-server")
