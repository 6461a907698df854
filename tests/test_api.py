"""Admin API over real HTTP (uvicorn) against a real Mosquitto: auth, model push validation, artifact
download with Range/ETag. If these fail, anyone can change the fleet, or a bad upload gets registered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_agent.protocol.signing import SignedManifest, verify_signed_manifest
from edge_agent.update.download import DownloadError, download
from tests.helpers import Server

PUSH = {"task": "classify", "classes": "red,green,blue"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mosquitto: str) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("api") / "data", mosquitto, env={"EDGELOOP_MAX_UPLOAD_BYTES": "200000"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def device_token(server: Server) -> str:
    r = server.http.post("/api/v1/devices", json={"device_id": "api-cam"})
    assert r.status_code == 201
    return str(r.json()["token"])


def _push(server: Server, path: Path, name: str = "colors", **params: str) -> httpx.Response:
    return server.http.post(f"/api/v1/models/{name}/versions", params={**PUSH, **params}, content=path.read_bytes())


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic abc"}, 401),
    ],
)
def test_admin_endpoints_need_the_admin_token(server: Server, headers: dict, status: int) -> None:
    for method, path in [
        ("GET", "/api/v1/devices"),
        ("POST", "/api/v1/devices"),
        ("GET", "/api/v1/models"),
        ("PUT", "/api/v1/devices/x/deployment"),
    ]:
        r = httpx.request(method, server.url + path, headers=headers, json={})
        assert r.status_code == status, (method, path, r.text)


def test_device_credential_cannot_call_admin_endpoints(server: Server, device_token: str) -> None:
    r = httpx.get(server.url + "/api/v1/devices", headers={"Authorization": f"Bearer {device_token}"})
    assert r.status_code == 403
    assert "device credentials" in r.json()["detail"]


def test_enroll_rejects_bad_and_duplicate_ids(server: Server, device_token: str) -> None:
    assert server.http.post("/api/v1/devices", json={"device_id": "a/b"}).status_code == 422
    assert server.http.post("/api/v1/devices", json={"device_id": "api-cam"}).status_code == 409


@pytest.mark.parametrize(
    "which, params, fragment",
    [
        ("not_onnx", {}, "not an ONNX model"),
        ("model_v1", {"task": "detect"}, "does not fit decoder 'yolov8'"),
        ("model_v1", {"decoder": "yolov8"}, "needs decoder classify"),
        ("model_v1", {"classes": "red,green"}, "with 2 classes"),
        ("model_v1", {"classes": "red,red,blue"}, "duplicate"),
        ("model_v1", {"input_size": "640x640"}, "differs from the model's input 64x64"),
    ],
)
def test_bad_push_is_refused_and_registers_nothing(
    server: Server, assets: dict[str, Path], which: str, params: dict, fragment: str
) -> None:
    r = _push(server, assets[which], name="badpush", **params)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]
    listed = [m for m in server.http.get("/api/v1/models").json() if m["name"] == "badpush"]
    assert listed == []


def test_oversized_upload_is_refused(server: Server) -> None:
    r = server.http.post("/api/v1/models/big/versions", params=PUSH, content=b"\x08" * 300_000)
    assert r.status_code == 413
    assert not [m for m in server.http.get("/api/v1/models").json() if m["name"] == "big"]


def test_push_signs_a_manifest_the_agent_verifies(server: Server, assets: dict[str, Path]) -> None:
    r1, r2 = _push(server, assets["model_v1"], name="signed"), _push(server, assets["model_v2"], name="signed")
    assert (r1.status_code, r2.status_code) == (201, 201)
    assert (r1.json()["version"], r2.json()["version"]) == (1, 2)
    root = (server.data_dir / "keys" / "root.pub").read_text().strip()
    # the manifest as the device receives it, through desired state
    dev = server.http.post("/api/v1/devices", json={"device_id": "sig-cam"}).json()
    assert dev["root_public_key"] == root
    server.http.put("/api/v1/devices/sig-cam/deployment", json={"model": "signed", "version": 2}).raise_for_status()
    from sqlmodel import Session, select

    from fleet_server.db import make_engine
    from fleet_server.devices.tables import Deployment

    with Session(make_engine(f"sqlite:///{server.data_dir / 'edgeloop.db'}")) as s:
        row = s.exec(select(Deployment).where(Deployment.device_id == "sig-cam")).one()
    m = verify_signed_manifest(SignedManifest.model_validate_json(row.signed_manifest), root)
    assert (m.model, m.version, m.classes) == ("signed", 2, ("red", "green", "blue"))
    assert m.artifacts["onnx-fp32"].length == assets["model_v2"].stat().st_size


def test_artifact_download_range_etag(
    server: Server, assets: dict[str, Path], device_token: str, tmp_path: Path
) -> None:
    data = assets["model_v1"].read_bytes()
    art = _push(server, assets["model_v1"], name="dl").json()["artifacts"][0]
    url = server.url + art["url"]
    dev = {"Authorization": f"Bearer {device_token}"}
    assert httpx.get(url).status_code == 401
    full = httpx.get(url, headers=dev)
    assert full.status_code == 200 and full.content == data
    etag = full.headers["etag"]
    assert etag == f'"{art["sha256"]}"'
    part = httpx.get(url, headers={**dev, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert httpx.get(url, headers={**dev, "Range": "bytes=-5"}).content == data[-5:]
    assert httpx.get(url, headers={**dev, "Range": f"bytes={len(data)}-"}).status_code == 416
    stale = httpx.get(url, headers={**dev, "Range": "bytes=10-", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data  # changed entity: whole file
    assert httpx.get(url, headers={**dev, "If-None-Match": etag}).status_code == 304
    assert httpx.get(server.url + "/api/v1/artifacts/" + "0" * 64, headers=dev).status_code == 404

    # the agent's downloader resumes a partial file with Range and refuses over-long bodies
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.part").write_bytes(data[:100])
    download(url, dest, len(data), art["sha256"], token=device_token, token_origin=server.url)
    assert dest.read_bytes() == data
    with pytest.raises(DownloadError, match="manifest says"):
        download(
            url, tmp_path / "short.onnx", len(data) - 1, art["sha256"], token=device_token, token_origin=server.url
        )
    assert not (tmp_path / "short.onnx.part").exists()
