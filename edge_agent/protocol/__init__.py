"""The wire contract between fleet server and agents: topics, messages, manifests, signatures."""

from edge_agent.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    Deployment,
    DesiredState,
    DetectionEvent,
    MessageError,
    ReportedState,
    SlotReport,
    StatusMessage,
    Telemetry,
    UpdateStateName,
    decode_message,
    encode_message,
)
from edge_agent.protocol.topics import TOPIC_PREFIX, DeviceTopics, parse_device_topic, valid_device_id

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "TOPIC_PREFIX",
    "Deployment",
    "DesiredState",
    "DetectionEvent",
    "DeviceTopics",
    "MessageError",
    "ReportedState",
    "SlotReport",
    "StatusMessage",
    "Telemetry",
    "UpdateStateName",
    "decode_message",
    "encode_message",
    "parse_device_topic",
    "valid_device_id",
]
