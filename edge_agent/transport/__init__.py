"""Message transport behind a tiny interface; MQTT is one implementation."""

from edge_agent.transport.base import Handler, Transport

__all__ = ["Handler", "Transport"]
