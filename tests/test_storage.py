"""Artifacts and hard-sample images in S3-compatible object storage. If these fail, a second replica (or a
server whose disk was replaced) cannot serve a model or a sample that another one received.

The S3 endpoint is moto's standalone server: MinIO and Ceph cannot be fetched on this machine (no registry
carries them), and moto speaks the S3 REST protocol over real HTTP, so boto3 here does exactly what it
does against AWS or MinIO. What it does not check is SigV4 signatures; boto3 computes those."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import httpx
import numpy as np

from tests.helpers import S3_CREDS, Proc, Server, bucket_keys, free_port, make_bucket, start_s3, wait_for

CREDS = S3_CREDS
_bucket, _keys = make_bucket, bucket_keys


def test_artifacts_and_samples_live_in_the_bucket_and_come_back_to_an_empty_disk(
    s3: str, mosquitto: str, tmp_path: Path, assets: dict[str, Path]
) -> None:
    client = _bucket(s3, "fleet-a")
    env = {**CREDS, "EDGELOOP_STORAGE_URL": f"s3://fleet-a/prod?endpoint={s3}"}
    srv = Server(tmp_path / "data", mosquitto, env=env)
    try:
        v = srv.push(assets["model_v1"])
        sha = v["artifacts"][0]["sha256"]
        assert f"prod/artifacts/{sha[:2]}/{sha}" in _keys(client, "fleet-a")
        dev = srv.enroll("s3-cam")
        img = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        r = httpx.post(
            f"{srv.url}/api/v1/devices/s3-cam/samples",
            headers={"Authorization": f"Bearer {dev['token']}"},
            files={"image": ("x.jpg", cv2.imencode(".jpg", img)[1].tobytes(), "image/jpeg")},
            data={"meta": json.dumps({"strategy": "random"})},
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert any(k.startswith("prod/samples/") for k in _keys(client, "fleet-a"))
        want_model = srv.http.get(f"/api/v1/artifacts/{sha}").content
        want_image = srv.http.get(f"/api/v1/samples/{sid}/image").content
        # the local copies are gone (another replica, a new disk): both come back from the bucket
        shutil.rmtree(srv.data_dir / "artifacts" / sha[:2])
        shutil.rmtree(srv.data_dir / "samples")
        part = srv.http.get(f"/api/v1/artifacts/{sha}", headers={"Range": "bytes=10-"})
        assert part.status_code == 206 and part.content == want_model[10:]
        assert srv.http.get(f"/api/v1/samples/{sid}/image").content == want_image
        # nothing in the bucket under the server's own name: no secrets logged either
        assert CREDS["AWS_SECRET_ACCESS_KEY"] not in srv.proc.log()
    finally:
        srv.stop()


def test_a_missing_bucket_stops_the_server_at_start_with_the_reason(s3: str, mosquitto: str, tmp_path: Path) -> None:
    from tests.helpers import BIN

    data = tmp_path / "data"
    data.mkdir()
    p = Proc(
        [str(BIN / "edgeloop"), "server", "--data-dir", str(data), "--port", str(free_port()), "--mqtt-url", mosquitto],
        tmp_path / "server.log",
        env={**CREDS, "EDGELOOP_STORAGE_URL": f"s3://no-such-bucket?endpoint={s3}"},
    )
    wait_for(lambda: not p.alive(), 30, "server to refuse the missing bucket")
    log = p.log()
    assert "cannot use bucket s3://no-such-bucket/" in log and CREDS["AWS_SECRET_ACCESS_KEY"] not in log
    p.stop()


def test_storage_outage_refuses_uploads_cleanly_and_recovers(
    mosquitto: str, tmp_path: Path, assets: dict[str, Path]
) -> None:
    """An S3 endpoint that goes away: uploads get 503 (devices keep the sample in their spool and retry), nothing
    half-registered is left, the server stays up, and it works again when the endpoint returns."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def s3_up() -> Proc:
        p = start_s3(port, tmp_path / "s3.log")
        _bucket(url, "fleet-b")
        return p

    s3proc = s3_up()
    env = {**CREDS, "EDGELOOP_STORAGE_URL": f"s3://fleet-b?endpoint={url}"}
    srv = Server(tmp_path / "data", mosquitto, env=env)
    try:
        dev = srv.enroll("s3-out")
        s3proc.stop()
        img = np.random.default_rng(2).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        jpg = cv2.imencode(".jpg", img)[1].tobytes()

        def upload() -> httpx.Response:
            return httpx.post(
                f"{srv.url}/api/v1/devices/s3-out/samples",
                headers={"Authorization": f"Bearer {dev['token']}"},
                files={"image": ("x.jpg", jpg, "image/jpeg")},
                data={"meta": json.dumps({"strategy": "random"})},
                timeout=120,
            )

        r = upload()
        assert r.status_code == 503 and "retry" in r.json()["detail"]
        assert srv.http.get("/api/v1/samples").json()["total"] == 0
        r = srv.http.post(
            "/api/v1/models/colors/versions",
            params={"task": "classify", "classes": "red,green,blue"},
            content=assets["model_v1"].read_bytes(),
            timeout=120,
        )
        assert r.status_code == 503 and "push again" in r.json()["detail"]
        assert srv.http.get("/api/v1/models").json() == []
        assert srv.http.get("/healthz").status_code == 200
        s3proc = s3_up()
        assert upload().status_code == 201
        assert srv.push(assets["model_v1"])["version"] == 1
    finally:
        srv.stop()
        s3proc.stop()
