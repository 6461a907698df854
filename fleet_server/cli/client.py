"""A thin HTTP client for the admin API, with errors a person can act on."""

from __future__ import annotations

import os
from typing import Any

import httpx


class CliError(Exception):
    pass


class AdminClient:
    def __init__(self, server_url: str | None, token: str | None, timeout: float = 60.0) -> None:
        self.url = (server_url or os.environ.get("EDGELOOP_SERVER_URL") or "http://127.0.0.1:8080").rstrip("/")
        self.token = token or os.environ.get("EDGELOOP_TOKEN")
        if not self.token:
            raise CliError("no admin token: pass --token or set EDGELOOP_TOKEN (see DATA_DIR/admin_token)")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {self.token}"})

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.url}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            if isinstance(detail, list):  # FastAPI validation errors
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            raise CliError(f"{method} {path}: HTTP {resp.status_code}: {detail}")
        return resp.json() if resp.content else None


def parse_ref(text: str) -> tuple[str, int]:
    """NAME:VERSION -> (name, version)."""
    name, _, version = text.rpartition(":")
    if not name or not version.isdigit():
        raise CliError(f"expected NAME:VERSION, got {text!r}")
    return name, int(version)
