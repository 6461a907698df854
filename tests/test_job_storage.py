"""Job data in object storage (EDGELOOP_STORAGE_URL): datasets, checkpoints, compiled files, results and job
logs live in the bucket, so a job needs nothing from the disk of the server that queued it. What a team
running two servers (or a server and training nodes) depends on: a training job whose server dies goes on
on another one, with an empty disk, from the checkpoint the first one uploaded, and registers once; a
dataset that is not in the bucket fails the job before training, naming what is missing.

The bucket is moto's S3 server over real HTTP (see tests/test_storage.py for why moto)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="the train extra (torch) is installed by `make test`")

from tests.helpers import S3_CREDS, Server, bucket_keys, make_bucket, wait_for  # noqa: E402

TOKEN = "storage-test-admin-token-0123456789abcdef"


def _env(s3: str, bucket: str, db: Path) -> dict[str, str]:
    return {
        **S3_CREDS,
        "EDGELOOP_STORAGE_URL": f"s3://{bucket}/fleet?endpoint={s3}",
        "EDGELOOP_DATABASE_URL": f"sqlite:///{db}",  # the replicas' shared database
        "EDGELOOP_ADMIN_TOKEN": TOKEN,
        "EDGELOOP_JOB_LEASE_S": "3",
    }


def _job(server: Server, job_id: int) -> dict[str, Any]:
    return dict(server.http.get(f"/api/v1/jobs/{job_id}", params={"tail": 1000}).json())


def _finished(server: Server, job_id: int, timeout: float) -> dict[str, Any]:
    return wait_for(lambda: (j := _job(server, job_id))["state"] in ("succeeded", "failed") and j, timeout, "job")


def test_a_job_whose_server_dies_resumes_on_another_with_an_empty_disk(s3: str, mosquitto: str, tmp_path: Path) -> None:
    client = make_bucket(s3, "jobs-a")
    env = _env(s3, "jobs-a", tmp_path / "fleet.db")
    a = Server(tmp_path / "a" / "data", mosquitto, env=env)
    try:
        a.cli("datasets", "synth", "far", "--count", "40", "--width", "96", "--height", "96", "--wait")
        keys = bucket_keys(client, "jobs-a", "fleet/datasets/")
        assert "fleet/datasets/far/v1.json" in keys
        assert len([k for k in keys if k.startswith("fleet/datasets/objects/")]) == 40
        r = a.http.post("/api/v1/jobs/train", json={"dataset": "far", "name": "far", "epochs": 8, "size": 96,
                                                     "batch": 8, "targets": ["onnx-fp32"]})  # fmt: skip
        assert r.status_code == 202, r.text
        jid = int(r.json()["id"])
        assert "storage_url" not in r.json()["params"]  # where the job's data is stays on the server side
        wait_for(lambda: any(e.get("event") == "epoch" for e in _job(a, jid)["log"]), 120, "the first epoch")
        assert f"fleet/jobs/{jid}/run/last.pt" in bucket_keys(client, "jobs-a", f"fleet/jobs/{jid}/")
    finally:
        a.proc.stop(signal.SIGKILL)  # its worker dies with it
        a.http.close()

    # another replica: its own, empty data dir; the same database, bucket and signing keys (a mounted secret)
    b_data = tmp_path / "b" / "data"
    shutil.copytree(tmp_path / "a" / "data" / "keys", b_data / "keys")
    b = Server(b_data, mosquitto, env=env)
    try:
        listed = b.http.get("/api/v1/datasets").json()
        assert any(d["name"] == "far" for d in listed), listed  # listed from the bucket, made on the other host
        done = _finished(b, jid, 300)
        assert done["state"] == "succeeded", done
        assert done["result"]["model"] == "far:1" and done["attempts"] == 2
        steps = [e.get("message", "") for e in done["log"] if e.get("event") == "step"]
        assert (
            "fetched 40 images of far:1 from object storage" in steps and "resuming from the last checkpoint" in steps
        )
        # B trained only the epochs A had not: its own metrics start past A's checkpoint and end at 8
        here = [json.loads(ln)["epoch"] for ln in (b_data / "jobs" / str(jid) / "run" / "metrics.jsonl").open()]
        assert here and here[0] > 1 and here == list(range(here[0], 9)), here
        assert not (tmp_path / "a" / "data" / "jobs" / str(jid) / "run" / "summary.json").exists()
        keys = bucket_keys(client, "jobs-a", "fleet/")
        for k in (f"fleet/jobs/{jid}/result.json", f"fleet/jobs/{jid}/log.jsonl", "fleet/checkpoints/far/1.pt"):
            assert k in keys, k
        version = b.http.get("/api/v1/models/far/versions/1").json()
        sha = version["artifacts"][0]["sha256"]
        assert f"fleet/artifacts/{sha[:2]}/{sha}" in keys
        assert [m["version"] for m in b.http.get("/api/v1/models").json() if m["name"] == "far"] == [1]
        assert S3_CREDS["AWS_SECRET_ACCESS_KEY"] not in b.proc.log()
    finally:
        b.stop()


def test_a_dataset_missing_from_the_bucket_fails_the_job_before_training_naming_it(
    s3: str, mosquitto: str, tmp_path: Path
) -> None:
    client = make_bucket(s3, "jobs-b")
    srv = Server(tmp_path / "data", mosquitto, env=_env(s3, "jobs-b", tmp_path / "fleet.db"))
    try:
        srv.cli("datasets", "synth", "gone", "--count", "20", "--width", "96", "--height", "96", "--wait")
        # three images vanish from the bucket and from this host's cache (a lifecycle rule, a wiped disk)
        lost = [k for k in bucket_keys(client, "jobs-b", "fleet/datasets/objects/")][:3]
        for k in lost:
            client.delete_object(Bucket="jobs-b", Key=k)
            (srv.data_dir / k.removeprefix("fleet/")).unlink()
        r = srv.http.post("/api/v1/jobs/train", json={"dataset": "gone", "name": "gone", "epochs": 1, "size": 96})
        done = _finished(srv, int(r.json()["id"]), 120)
        assert done["state"] == "failed", done
        err = done["error"]
        assert "gone:1: 3 image(s) are in neither" in err and "s3://jobs-b/fleet" in err, err
        assert any(f"e.g. {k.removeprefix('fleet/')}" in err for k in lost), err  # one of them, by its key
        assert not any(e.get("event") == "epoch" for e in done["log"])  # nothing trained
        # the version file itself gone: the job is refused at once, naming the version and the bucket
        client.delete_object(Bucket="jobs-b", Key="fleet/datasets/gone/v1.json")
        (srv.data_dir / "datasets" / "gone" / "v1.json").unlink()
        r = srv.http.post("/api/v1/jobs/train", json={"dataset": "gone:1", "name": "gone", "epochs": 1})
        assert r.status_code == 404 and "no dataset version gone:1 in object storage (s3://jobs-b/fleet" in r.text
    finally:
        srv.stop()
