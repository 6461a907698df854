"""publish / subscribe / stop: all the rest of the agent and server know about the broker."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

Handler = Callable[[str, bytes], None]


class Transport(ABC):
    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, wait_s: float = 0.0) -> bool: ...

    @abstractmethod
    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @property
    @abstractmethod
    def connected(self) -> bool: ...
