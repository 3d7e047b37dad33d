"""The checked-in modules of the MQTT framing are what ``mqtt.proto`` compiles to, and its bodies
are the ``fedrl.v1`` messages (one schema for both transports)."""

from pathlib import Path

import pytest
from grpc_tools import protoc

import fedrl.wire
from fedrl.wire import fedrl_pb2, mqtt_pb2

WIRE = Path(fedrl.wire.__file__).parent


def test_checked_in_modules_match_mqtt_proto(tmp_path):
    # Execute: the command at the top of mqtt.proto
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{WIRE.parents[1]}",
                f"--python_out={tmp_path}",
                f"--pyi_out={tmp_path}",
                str(WIRE / "mqtt.proto"),
            ]
        )
        == 0
    )

    # Assert
    for name in ("mqtt_pb2.py", "mqtt_pb2.pyi"):
        assert (WIRE / name).read_text() == (tmp_path / "fedrl" / "wire" / name).read_text(), f"regenerate {name}"


def test_requests_and_replies_carry_the_grpc_schema_messages():
    request, reply = mqtt_pb2.Request.DESCRIPTOR, mqtt_pb2.Reply.DESCRIPTOR
    assert request.fields_by_name["register"].message_type is fedrl_pb2.RegisterRequest.DESCRIPTOR
    assert reply.fields_by_name["ack"].message_type is fedrl_pb2.Ack.DESCRIPTOR
    assert mqtt_pb2.UpdateStream.DESCRIPTOR.fields_by_name["parts"].message_type is fedrl_pb2.UpdatePart.DESCRIPTOR


def test_a_device_link_takes_a_full_server_over_mqtt_as_one_to_try_again():
    from fedrl.edge.link import Unreachable
    from fedrl.edge.mqtt_link import _result
    from fedrl.wire import mqtt_pb2 as mq

    reply = mq.Reply(refusal=mq.Refusal(reason="UNAVAILABLE", message="the server's buffers are full"))
    with pytest.raises(Unreachable, match="buffers are full"):
        _result("push", reply, "ack")
