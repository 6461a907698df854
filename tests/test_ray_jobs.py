"""Jobs on a real Ray cluster: two Ray nodes on this machine (one CPU each, started on free ports for this
module), the server submitting through Ray's job API. What a team with a training cluster depends on:
training spread over the nodes registers a signed version, a cancel stops the Ray job, a server killed
mid-job re-attaches after restart and registers the result exactly once, and impossible requests fail
with a reason instead of hanging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BIN, S3_CREDS, Server, bucket_keys, free_port, make_bucket, wait_for

pytestmark = pytest.mark.e2e
ray = pytest.importorskip("ray", reason="the ray extra is installed by `make test`")

RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
NODE_CACHES: list[Path] = []  # the cluster's nodes' EDGELOOP_CACHE_DIR: head, second


def _node_args() -> list[str]:
    p = [free_port() for _ in range(6)]
    return [
        "--num-cpus=1",
        "--node-ip-address=127.0.0.1",
        f"--node-manager-port={p[0]}",
        f"--object-manager-port={p[1]}",
        f"--dashboard-agent-listen-port={p[2]}",
        f"--dashboard-agent-grpc-port={p[3]}",
        f"--metrics-export-port={p[4]}",
        f"--runtime-env-agent-port={p[5]}",
        "--disable-usage-stats",
    ]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A head node and a second node, each with its own CPU, on free ports; yields the jobs URL."""
    from ray.job_submission import JobSubmissionClient

    exe = str(BIN / "ray")
    port, dash, client = free_port(), free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    head = [exe, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
            "--include-dashboard=true", f"--ray-client-server-port={client}", f"--temp-dir={temp}"]  # fmt: skip
    head += _node_args()
    # each node has its own cache of the bucket (two hosts, as far as job data goes) and the bucket's credentials
    # in its environment, as a Ray pod has them; the server never passes them on
    env = {**RAY_ENV, **S3_CREDS}
    subprocess.run(head, check=True, env={**env, "EDGELOOP_CACHE_DIR": f"{temp}/cache-head"}, capture_output=True,
                   timeout=180)  # fmt: skip
    try:
        second = [exe, "start", f"--address=127.0.0.1:{port}", *_node_args()]
        subprocess.run(second, check=True, env={**env, "EDGELOOP_CACHE_DIR": f"{temp}/cache-second"},
                       capture_output=True, timeout=180)  # fmt: skip
        NODE_CACHES.extend([Path(f"{temp}/cache-head"), Path(f"{temp}/cache-second")])
        jobs = JobSubmissionClient(f"http://127.0.0.1:{dash}")
        wait_for(lambda: jobs.list_jobs() is not None, 60, "the Ray job API")
        yield f"ray://127.0.0.1:{dash}"
    finally:
        subprocess.run([exe, "stop", "--force"], env=RAY_ENV, capture_output=True, timeout=120)


def _server(
    tmp_path: Path, mosquitto: str, jobs: str, data: Path | None = None, port: int | None = None, **env: str
) -> Server:
    env = {"EDGELOOP_JOB_LEASE_S": "4", **env}
    return Server(data or tmp_path / "server", mosquitto, extra=["--jobs", jobs], env=env, port=port)


def _job(server: Server, job_id: int) -> dict[str, Any]:
    return dict(server.http.get(f"/api/v1/jobs/{job_id}").json())


def _log(server: Server, job_id: int) -> list[dict[str, Any]]:
    path = server.data_dir / "jobs" / str(job_id) / "log.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _synth(server: Server) -> None:
    """60 small scenes, made by a synthesis job: on the Ray cluster too."""
    server.cli("datasets", "synth", "shapes", "--count", "60", "--width", "160", "--height", "128", "--wait")


def _train(server: Server, **over: Any) -> int:
    body = {"dataset": "shapes", "model": "eldet", "name": "shapes", "epochs": 2, "batch": 8, "size": 128,
            "targets": ["onnx-fp32"], **over}  # fmt: skip
    r = server.http.post("/api/v1/jobs/train", json=body)
    assert r.status_code in (200, 201, 202), r.text
    return int(r.json()["id"])


def test_an_unreachable_cluster_is_refused_at_start(tmp_path: Path) -> None:
    port = free_port()
    r = subprocess.run(
        [str(BIN / "edgeloop"), "server", "--data-dir", str(tmp_path / "d"), "--port", str(port),
         "--mqtt-port", "0", "--jobs", f"ray://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "does not answer" in r.stderr, r.stderr[-2000:]


def test_training_on_two_ray_nodes_registers_a_signed_version_and_cancel_stops_a_ray_job(
    tmp_path: Path, mosquitto: str, ray_cluster: str
) -> None:
    from ray.job_submission import JobSubmissionClient

    server = _server(tmp_path, mosquitto, ray_cluster)
    try:
        _synth(server)
        job = _train(server, workers=2)
        done = wait_for(lambda: (j := _job(server, job))["state"] in ("succeeded", "failed") and j, 600, "train job")
        assert done["state"] == "succeeded", done
        events = _log(server, job)
        placed = {e["rank"]: e["node"] for e in events if e.get("event") == "ray_worker"}
        assert set(placed) == {0, 1} and len(set(placed.values())) == 2, placed  # one worker on each node
        assert any(e.get("event") == "epoch" for e in events)  # per-epoch metrics streamed in as on the local runner
        shown = server.cli("models", "show", "shapes:1").stdout
        assert "onnx-fp32" in shown

        # more workers than the cluster has CPUs: a reason, at once, not a hang
        job = _train(server, workers=3)
        failed = wait_for(lambda: (j := _job(server, job))["state"] in ("succeeded", "failed") and j, 300, "refusal")
        assert failed["state"] == "failed" and "needs 3 CPUs" in (failed["error"] or ""), failed

        # a cancel stops the Ray job
        job = _train(server, epochs=200)
        wait_for(lambda: any(e.get("event") == "epoch" for e in _log(server, job)), 300, "the long job training")
        server.cli("jobs", "cancel", str(job))
        wait_for(lambda: _job(server, job)["state"] == "cancelled", 60, "cancelled")
        sid = (server.data_dir / "jobs" / str(job) / "ray_submission").read_text().strip()
        client = JobSubmissionClient(ray_cluster.replace("ray://", "http://"))
        wait_for(lambda: str(client.get_job_status(sid)).endswith("STOPPED"), 60, "the Ray job stopped")
    finally:
        server.stop()


def test_a_server_killed_mid_job_reattaches_and_registers_once(
    tmp_path: Path, mosquitto: str, ray_cluster: str
) -> None:
    data = tmp_path / "server"
    server = _server(tmp_path, mosquitto, ray_cluster, data)
    try:
        _synth(server)
        job = _train(server, epochs=6)
        wait_for(lambda: any(e.get("event") == "epoch" for e in _log(server, job)), 300, "training under way")
        server.proc.stop(signal.SIGKILL)
        sid = (data / "jobs" / str(job) / "ray_submission").read_text().strip()
        server = _server(tmp_path, mosquitto, ray_cluster, data, port=server.port)
        done = wait_for(lambda: (j := _job(server, job))["state"] in ("succeeded", "failed") and j, 600, "job done")
        assert done["state"] == "succeeded", done
        assert f"re-attached to Ray job {sid}" in server.proc.log()
        assert (data / "jobs" / str(job) / "ray_submission").read_text().strip() == sid  # never submitted twice
        versions = [v for v in server.http.get("/api/v1/models").json() if v["name"] == "shapes"]
        assert [v["version"] for v in versions] == [1]  # registered exactly once
        epochs = [e["epoch"] for e in _log(server, job) if e.get("event") == "epoch"]
        assert epochs == sorted(set(epochs)), epochs  # the log read on from where the killed server stopped
    finally:
        server.stop()


def test_with_a_bucket_ray_nodes_need_nothing_from_the_servers_disk(
    tmp_path: Path, mosquitto: str, ray_cluster: str, s3: str
) -> None:
    """EDGELOOP_STORAGE_URL set: the synthesis job writes the dataset to the bucket from a Ray node; a 2-worker
    training job fetches it into each node's own cache, rank 0 uploads its checkpoints there, and the server
    registers the version from what the bucket holds. The server's data dir never holds the dataset's images;
    of the run, only the checkpoint it registers."""
    client = make_bucket(s3, "ray-jobs")
    storage = {**S3_CREDS, "EDGELOOP_STORAGE_URL": f"s3://ray-jobs/fleet?endpoint={s3}"}
    server = _server(tmp_path, mosquitto, ray_cluster, **storage)
    try:
        _synth(server)
        assert len(bucket_keys(client, "ray-jobs", "fleet/datasets/objects/")) == 60
        job = _train(server, workers=2)
        done = wait_for(lambda: (j := _job(server, job))["state"] in ("succeeded", "failed") and j, 600, "train job")
        assert done["state"] == "succeeded", done
        placed = {e["rank"]: e["node"] for e in _log(server, job) if e.get("event") == "ray_worker"}
        assert len(set(placed.values())) == 2, placed  # one worker on each node
        for cache in NODE_CACHES:  # each node read the dataset into its own cache
            assert len(list((cache / "datasets" / "objects").rglob("*.jpg"))) == 60, cache
        run = bucket_keys(client, "ray-jobs", f"fleet/jobs/{job}/run/")
        assert {f"fleet/jobs/{job}/run/{f}" for f in ("last.pt", "best.pt", "metrics.jsonl", "summary.json")} <= set(
            run
        )
        assert not (server.data_dir / "datasets" / "objects").exists()
        # the server fetched only what it registers: the best checkpoint (its weights are kept with the version)
        fetched = server.data_dir / "jobs" / str(job) / "run"
        assert sorted(p.name for p in fetched.iterdir()) == ["best.pt"], list(fetched.iterdir())
        assert "fleet/checkpoints/shapes/1.pt" in bucket_keys(client, "ray-jobs", "fleet/checkpoints/")
        assert server.http.get("/api/v1/models/shapes/versions/1").status_code == 200
    finally:
        server.stop()
