"""Protocol: topics and message decoding. If these break, agents and servers stop understanding each
other, or a malformed message crashes a process instead of being ignored."""

from __future__ import annotations

import json

import pytest

from edge_agent.protocol import (
    MAX_PAYLOAD_BYTES,
    DesiredState,
    DeviceTopics,
    MessageError,
    ReportedState,
    SlotReport,
    Telemetry,
    UpdateStateName,
    decode_message,
    encode_message,
    parse_device_topic,
    valid_device_id,
)
from edge_agent.protocol.topics import fleet_filter


@pytest.mark.parametrize(
    "device_id, ok",
    [
        ("", False),
        ("cam-1", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("cam/1", False),
        ("cam+", False),
        ("#", False),
        ("-cam", False),
        ("Dock.Camera_2", True),
    ],
)
def test_device_ids(device_id: str, ok: bool) -> None:
    assert valid_device_id(device_id) is ok
    if not ok:
        with pytest.raises(ValueError):
            DeviceTopics(device_id)


def test_topics_round_trip() -> None:
    t = DeviceTopics("cam-1")
    assert t.desired == "edgeloop/v1/devices/cam-1/desired"
    for kind in ("desired", "reported", "status", "telemetry", "events"):
        assert parse_device_topic(getattr(t, kind)) == ("cam-1", kind)
    assert parse_device_topic("edgeloop/v1/devices/cam-1/other") is None
    assert parse_device_topic("edgeloop/v1/devices/a/b/telemetry") is None
    assert fleet_filter("telemetry") == "$share/edgeloop/edgeloop/v1/devices/+/telemetry"
    assert fleet_filter("telemetry", shared=False) == "edgeloop/v1/devices/+/telemetry"


def _reported() -> ReportedState:
    return ReportedState(
        device_id="cam-1",
        revision=3,
        slots={"default": SlotReport(model="m", version=2, state=UpdateStateName.committed)},
    )


def test_encode_decode_round_trip() -> None:
    msg = _reported()
    raw = encode_message(msg)
    assert json.loads(raw)["schema"] == 1
    back = decode_message(raw, ReportedState, expect_device="cam-1")
    assert back.slots["default"].version == 2


@pytest.mark.parametrize(
    "payload, model, fragment",
    [
        (b"", Telemetry, "not JSON"),
        (b"\xff\xfe", Telemetry, "not JSON"),
        (b"[1,2]", Telemetry, "expected an object"),
        (b'{"device_id":"cam-1"}', Telemetry, "unsupported schema version None"),
        (b'{"schema":2,"device_id":"cam-1"}', Telemetry, "unsupported schema version 2"),
        (b'{"schema":1,"device_id":"cam-1","fps":"fast"}', Telemetry, "fps"),
        (b'{"schema":1,"device_id":"cam-1","surprise":1}', Telemetry, "surprise"),
        (b'{"schema":1,"device_id":"cam-2"}', Telemetry, "does not match topic"),
        (b'{"schema":1,"device_id":"cam-1","revision":1,"deployments":[{"manifest":{}}]}', DesiredState, "deployments"),
        (b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", Telemetry, "exceeds"),
    ],
)
def test_malformed_payloads_raise_one_line_errors(payload: bytes, model: type, fragment: str) -> None:
    with pytest.raises(MessageError) as err:
        decode_message(payload, model, expect_device="cam-1")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("flt", "topic"),
    [
        ("edgeloop/v1/devices/+/telemetry", "edgeloop/v1/devices/a/telemetry"),
        ("edgeloop/v1/devices/+/telemetry", "edgeloop/v1/devices/a/status"),
        ("$share/edgeloop/edgeloop/v1/devices/+/status", "edgeloop/v1/devices/a/status"),
        ("a/#", "a"),
        ("a/#", "a/b/c"),
        ("#", "x/y"),
        ("#", "$SYS/broker/load"),
        ("+/broker/load", "$SYS/broker/load"),
        ("a/+", "a"),
        ("a/+", "a/b/c"),
        ("+", "a/b"),
        ("a/+/c", "a/x/c"),
        ("a/b", "a/b/"),
    ],
)
def test_the_transport_routes_topics_exactly_as_paho_matches_them(flt: str, topic: str) -> None:
    """The server's MQTT thread matches every message against its subscriptions with its own matcher (paho's
    builds a tree on each call); a mismatch would drop device messages or hand them to the wrong handler."""
    import paho.mqtt.client as mqtt

    from edge_agent.transport.mqtt import _filter_levels, _matches

    plain = flt.split("/", 2)[2] if flt.startswith("$share/") else flt
    assert _matches(_filter_levels(flt), topic.split("/")) == mqtt.topic_matches_sub(plain, topic)
