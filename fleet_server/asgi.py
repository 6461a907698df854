"""A piece the server's ASGI middlewares share."""

from __future__ import annotations

from typing import Any


class StatusRecorder:
    """Wraps `send`: remembers the response status the app sent (500 until it sends one, or if it raises)."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.status = 500

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
