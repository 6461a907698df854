"""MQTT topic names. Every device topic lives under `edgeloop/v1/devices/{device_id}/`."""

from __future__ import annotations

import re
from dataclasses import dataclass

TOPIC_PREFIX = "edgeloop/v1/devices"
SHARE_GROUP = "edgeloop"
KINDS = ("desired", "reported", "status", "telemetry", "events")

# Device ids become topic levels and file names: keep them to a safe alphabet,
# never MQTT wildcards (+ #) or separators (/).
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def valid_device_id(device_id: str) -> bool:
    return bool(_DEVICE_ID.match(device_id))


@dataclass(frozen=True)
class DeviceTopics:
    device_id: str

    def __post_init__(self) -> None:
        if not valid_device_id(self.device_id):
            raise ValueError(
                f"invalid device id {self.device_id!r}: use 1-64 characters of A-Z a-z 0-9 _ . - "
                "starting with a letter or digit"
            )

    @property
    def base(self) -> str:
        return f"{TOPIC_PREFIX}/{self.device_id}"

    @property
    def desired(self) -> str:
        return f"{self.base}/desired"

    @property
    def reported(self) -> str:
        return f"{self.base}/reported"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def events(self) -> str:
        return f"{self.base}/events"


def fleet_filter(kind: str, shared: bool = True) -> str:
    """Subscription filter for one kind of device message across the fleet.

    With `shared`, several server replicas split the traffic (`$share/edgeloop/...`).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}; expected one of {KINDS}")
    topic = f"{TOPIC_PREFIX}/+/{kind}"
    return f"$share/{SHARE_GROUP}/{topic}" if shared else topic


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """`edgeloop/v1/devices/cam-1/telemetry` -> ("cam-1", "telemetry"); None if not a device topic."""
    prefix = TOPIC_PREFIX + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :].split("/")
    if len(rest) != 2 or rest[1] not in KINDS or not valid_device_id(rest[0]):
        return None
    return rest[0], rest[1]
