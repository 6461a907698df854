"""A thin HTTP client for the admin API, with errors a person can act on."""

from __future__ import annotations

import os
from typing import Any

import httpx

from edge_agent.protocol import manifest
from edge_agent.protocol.manifest import RefError


class CliError(Exception):
    pass


class AdminClient:
    def __init__(self, server_url: str | None, token: str | None, timeout: float = 60.0) -> None:
        self.url = (server_url or os.environ.get("EDGELOOP_SERVER_URL") or "http://127.0.0.1:8080").rstrip("/")
        self.token = token or os.environ.get("EDGELOOP_TOKEN")
        if not self.token:
            raise CliError("no admin token: pass --token or set EDGELOOP_TOKEN (see DATA_DIR/admin_token)")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {self.token}"})

    def download(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        """GET a file (an export); CliError with the server's reason on an error status."""
        try:
            resp = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.url}: {exc}") from exc
        if resp.status_code >= 400:
            raise CliError(f"GET {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.content

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
    """NAME:VERSION -> (name, version), or a CliError that says what was expected."""
    try:
        return manifest.parse_ref(text)
    except RefError as exc:
        raise CliError(str(exc)) from None


def parse_ref_latest(text: str) -> tuple[str, int | None]:
    """NAME or NAME:VERSION -> (name, version or None), or a CliError."""
    try:
        return manifest.parse_ref_latest(text)
    except RefError as exc:
        raise CliError(str(exc)) from None
