"""Artifact download over HTTP(S): resumes with Range (guarded by If-Range/ETag), never reads more than
the manifest's `length`, and hashes as it writes."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

log = logging.getLogger(__name__)
CHUNK = 1 << 16


class DownloadError(Exception):
    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient  # worth retrying: network trouble or a server-side error


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_url(server_url: str, url: str) -> str:
    return url if "://" in url else urljoin(server_url.rstrip("/") + "/", url.lstrip("/"))


def same_origin(a: str, b: str) -> bool:
    """Scheme, host and port equal (default ports filled in): where a device's credential may be sent."""

    def origin(u: str) -> tuple[str, str, int | None]:
        p = urlsplit(u)
        scheme = p.scheme.lower()
        return scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(scheme)

    return origin(a) == origin(b)


def download(
    url: str,
    dest: Path,
    length: int,
    etag: str,
    token: str | None = None,
    token_origin: str | None = None,
    timeout: float = 30.0,
    client: httpx.Client | None = None,
) -> Path:
    """Download into `dest` (via `dest.part`), resuming a previous partial download.

    Raises DownloadError if the server offers or sends more than `length` bytes, or fewer. `token` goes only to
    `token_origin` (the configured server): a signed manifest may name another host, which gets no credential.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        part.unlink()
        have = 0
    send_token = token is not None and token_origin is not None and same_origin(url, token_origin)
    headers = {"Authorization": f"Bearer {token}"} if send_token else {}
    if 0 < have < length:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = f'"{etag}"'
    own = client is None
    cli = client or httpx.Client(timeout=timeout, follow_redirects=False)
    try:
        if have == length:
            os.replace(part, dest)
            return dest
        with cli.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 206 and have:
                mode = "ab"
            elif resp.status_code == 200:
                mode, have = "wb", 0
            else:
                code = resp.status_code
                raise DownloadError(f"GET {url}: HTTP {code}", transient=code >= 500 or code == 429)
            declared = resp.headers.get("content-length")
            if declared is not None and have + int(declared) > length:
                raise DownloadError(f"server offers {have + int(declared)} bytes, manifest says {length}")
            got = have
            with open(part, mode) as fh:
                for chunk in resp.iter_bytes(CHUNK):
                    got += len(chunk)
                    if got > length:
                        raise DownloadError(f"artifact is longer than the {length} bytes the manifest allows")
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        if got != length:
            raise DownloadError(f"artifact is {got} bytes, manifest says {length}")
        os.replace(part, dest)
        return dest
    except httpx.HTTPError as exc:  # keep the partial file: the next attempt resumes it
        raise DownloadError(f"GET {url}: {type(exc).__name__}: {exc}", transient=True) from exc
    except OSError as exc:  # a full disk: give the space back (the serving model needs it) and retry later
        part.unlink(missing_ok=True)
        why = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or type(exc).__name__
        raise DownloadError(f"cannot write {dest.name}: {why}", transient=exc.errno == errno.ENOSPC) from exc
    except DownloadError as exc:
        if not exc.transient:
            part.unlink(missing_ok=True)  # never resume from bytes the server should not have sent
        raise
    finally:
        if own:
            cli.close()
