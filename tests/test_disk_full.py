"""A disk that fills during a model download must not leave the device stuck (hardening F-6).

Real full disks: each test mounts a tiny tmpfs (root and permission to mount are needed; where the
machine refuses the mount the tests skip and say so). If these fail, a device that ran out of space
keeps a half-downloaded file that fills its disk, and the server shows `downloading` forever because the
failure could not be saved.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edge_agent.update.download import DownloadError, download
from edge_agent.update.machine import Record, StepFailed, UpdateMachine
from edge_agent.update.states import State

BODY = b"m" * (2 * 1024 * 1024)


@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"this machine refuses to mount a tmpfs: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture()
def artifact_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/artifact"
    srv.shutdown()


def test_a_download_into_a_full_disk_gives_the_space_back(
    tiny_disk: Path, artifact_server: str, tmp_path: Path
) -> None:
    with pytest.raises(DownloadError, match="disk full") as err:
        download(artifact_server, tiny_disk / "model.onnx", len(BODY), "e")
    assert err.value.transient  # the agent retries while space may come back
    assert list(tiny_disk.iterdir()) == []  # no .part left filling the disk
    assert download(artifact_server, tmp_path / "model.onnx", len(BODY), "e").stat().st_size == len(BODY)


class FailingDownload:
    def download(self, job: dict[str, Any]) -> None:
        raise StepFailed("download: cannot write model.onnx: disk full")

    def verify(self, job: dict[str, Any]) -> None: ...
    def prepare(self, job: dict[str, Any]) -> None: ...
    def warm(self, job: dict[str, Any]) -> None: ...
    def activate_and_watch(self, job: dict[str, Any]) -> None: ...
    def commit(self, job: dict[str, Any]) -> None: ...
    def rollback(self, job: dict[str, Any]) -> None: ...


def test_a_failure_is_reported_even_when_the_disk_cannot_hold_it(tiny_disk: Path) -> None:
    reported: list[tuple[State, str | None]] = []
    machine = UpdateMachine(
        tiny_disk / "update.json", FailingDownload(), on_change=lambda r: reported.append((r.state, r.reason))
    )
    filler = tiny_disk / "filler"
    with open(filler, "wb") as fh, pytest.raises(OSError):
        while True:
            fh.write(b"f" * 65536)
            fh.flush()
    machine.start({"revision": 3, "model": "colors", "version": 2})
    assert machine.state is State.FAILED and machine.unsaved
    assert reported[-1][0] is State.FAILED and "disk full" in (reported[-1][1] or "")
    assert machine.save_pending() is False  # still no room
    filler.unlink()
    assert machine.save_pending() is True
    saved = Record.from_json(json.loads((tiny_disk / "update.json").read_text()))
    assert saved.state is State.FAILED and "disk full" in (saved.reason or "")


def test_a_spool_on_a_full_disk_refuses_new_samples_keeps_the_accepted_and_recovers(tiny_disk: Path) -> None:
    """Mining into a spool whose disk fills: each refused sample leaves nothing behind, every accepted one stays
    whole and uploadable, and once uploads free space new samples are accepted again."""
    import os

    from edge_agent.flywheel.spool import Spool

    spool = Spool(tiny_disk / "spool", quota_bytes=100 * 1024 * 1024)  # the disk, not the quota, is the limit
    accepted, refused = [], 0
    for i in range(40):
        jpeg = os.urandom(48 * 1024) + i.to_bytes(4, "big")
        try:
            key = spool.put(jpeg, "random", {"i": i})
        except OSError as exc:
            assert "spool: cannot store the sample" in str(exc)
            refused += 1
            continue
        assert key is not None
        accepted.append((key, jpeg))
    assert accepted and refused, (len(accepted), refused)
    assert not list((tiny_disk / "spool" / "images").glob(".*.tmp"))
    assert spool.pending() == len(accepted)
    for key, jpeg in accepted:
        assert (tiny_disk / "spool" / "images" / f"{key}.jpg").read_bytes() == jpeg
    # uploads drain some: room again
    for p in spool.due(limit=4):
        spool.done(p.key)
    assert spool.put(os.urandom(48 * 1024), "random", {"after": True}) is not None
    spool.close()
    again = Spool(tiny_disk / "spool", quota_bytes=100 * 1024 * 1024)  # a restart finds nothing lost or orphaned
    assert again.lost == 0 and again.pending() == len(accepted) - 4 + 1
    again.close()
