"""Artifact download: admins and enrolled devices; single-range requests, ETag = sha256."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from sqlmodel import select

from fleet_server.api.deps import AnyPrincipalDep, ServicesDep, SessionDep, binary
from fleet_server.registry.tables import Artifact

router = APIRouter(prefix="/api/v1/artifacts", tags=["artifacts"])
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _iter_file(path: Path, start: int, length: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(start)
        left = length
        while left > 0:
            data = fh.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data


@router.get(
    "/{sha256}",
    response_class=StreamingResponse,
    responses={**binary("application/octet-stream", "The artifact (206 for a Range)"), 206: {}, 304: {}, 416: {}},
)
def download(sha256: str, request: Request, session: SessionDep, services: ServicesDep, _: AnyPrincipalDep) -> Response:
    if session.exec(select(Artifact.id).where(Artifact.sha256 == sha256)).first() is None:
        raise HTTPException(404, "no such artifact")
    path = services.store.ensure(sha256)
    if path is None:
        raise HTTPException(404, "artifact file is missing from the store")
    size = path.stat().st_size
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=31536000, immutable"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    rng = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if rng and (if_range is None or if_range == etag):
        m = _RANGE.match(rng.strip())
        if not m or (not m.group(1) and not m.group(2)):
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # suffix range: last N bytes
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size or start > end:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        n = end - start + 1
        headers.update({"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(n)})
        return StreamingResponse(
            _iter_file(path, start, n), status_code=206, headers=headers, media_type="application/octet-stream"
        )
    headers["Content-Length"] = str(size)
    return StreamingResponse(_iter_file(path, 0, size), headers=headers, media_type="application/octet-stream")
