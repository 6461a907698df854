"""The model zoo through the real server and CLI: synthesize a dataset, train, compile every target and
register a signed version with its target table; recompile; fine-tune; import and export datasets over
HTTP with bad archives refused; cancel a running job. This is how an engineer uses the zoo day to day."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the train extra (torch) is installed by `make test`")

from edge_agent.protocol.signing import SignedManifest, verify_signed_manifest  # noqa: E402
from model_zoo.datasets.store import encode_image  # noqa: E402
from tests.helpers import Server, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mosquitto: str) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("jobs") / "data", mosquitto, env={"EDGELOOP_MAX_UPLOAD_BYTES": "3000000"})
    yield s
    s.stop()


def _json(server: Server, *args: str) -> dict:
    return dict(json.loads(server.cli(*args, "--json").stdout))


@pytest.fixture(scope="module")
def trained(server: Server) -> dict:
    j = _json(server, "datasets", "synth", "shapes", "--count", "160", "--width", "128", "--height", "128", "--wait")
    assert j["state"] == "succeeded" and j["result"]["dataset"] == "shapes:1" and j["result"]["samples"] == 160
    j = _json(server, "train", "--dataset", "shapes", "--name", "shapes", "--epochs", "2", "--size", "128", "--wait")
    assert j["state"] == "succeeded", j
    return j


def test_train_registers_a_signed_version_with_its_target_table(server: Server, trained: dict) -> None:
    assert trained["result"]["model"] == "shapes:1" and trained["progress"] == 1.0
    assert trained["result"]["training"]["epochs_run"] == 2
    r = server.http.get("/api/v1/models/shapes/versions/1").json()
    targets = {a["target"] for a in r["artifacts"]}
    statuses = {row["target"]: row["status"] for row in r["report"]["results"]}
    assert targets == {t for t, s in statuses.items() if s == "built" and t != "tensorrt-engine"}
    assert {"onnx-fp32", "onnx-fp16", "tensorrt"} <= targets and statuses["tensorrt-engine"] == "not built: no GPU"
    assert r["lineage"] == {"dataset": "shapes:1", "job": str(trained["id"])}
    # what the devices get is signed and carries the measurements and the per-class recommendation
    root = (server.data_dir / "keys" / "root.pub").read_text().strip()
    from sqlmodel import Session, create_engine, select

    from fleet_server.registry.tables import ModelVersion

    with Session(create_engine(f"sqlite:///{server.data_dir / 'edgeloop.db'}")) as s:
        row = s.exec(select(ModelVersion).where(ModelVersion.model == "shapes")).first()
        assert row is not None and row.checkpoint == "checkpoints/shapes/1.pt"
        m = verify_signed_manifest(SignedManifest.model_validate_json(row.signed_manifest), root)
    assert m.task == "detect" and m.decoder.type == "yolov8" and m.input.resize == "letterbox"
    assert set(m.artifacts) == targets and m.recommended["cpu"] in targets
    assert m.artifacts["onnx-fp32"].latency_ms and m.artifacts["onnx-fp32"].measured_on == "cpu"
    assert m.lineage["dataset"] == "shapes:1"
    art = server.http.get(m.artifacts["onnx-fp16"].url)
    assert art.status_code == 200 and len(art.content) == m.artifacts["onnx-fp16"].length
    text = server.cli("models", "show", "shapes:1").stdout
    assert "compile report" in text and "not built: no GPU" in text and "recommended for cpu" in text
    # the console's model page shows the same table: every target row, the recommendation, the lineage
    page = server.http.get("/console/models/shapes/1")
    assert page.status_code == 200
    for t in statuses:
        assert f"<td>{t}</td>" in page.text
    assert '<span class="pill ok">cpu</span>' in page.text and "not built: no GPU" in page.text
    assert f'href="/console/jobs/{trained["id"]}"' in page.text
    job_page = server.http.get(f"/console/jobs/{trained['id']}").text
    # loss and mAP curves, each against training time (cumulative epoch seconds)
    assert 'id="chart-loss"' in job_page and 'id="chart-mAP50"' in job_page and 'id="chart-mAP50_95"' in job_page
    xs = json.loads(job_page.split('id="chart-mAP50" data-x=\'', 1)[1].split("'", 1)[0])
    assert len(xs) == 2 and 0 < xs[0] < xs[1]  # two epochs


def test_recompile_and_fine_tune_make_new_versions_with_lineage(server: Server, trained: dict) -> None:
    j = _json(server, "compile", "shapes:1", "--targets", "onnx-fp32,onnx-int8", "--wait")
    assert j["state"] == "succeeded" and j["result"]["model"] == "shapes:2"
    r = server.http.get("/api/v1/models/shapes/versions/2").json()
    assert {a["target"] for a in r["artifacts"]} <= {"onnx-fp32", "onnx-int8"}
    assert r["lineage"]["recompiled_from"] == "shapes:1"
    j = _json(
        server, "train", "--dataset", "shapes:1", "--name", "shapes", "--epochs", "1", "--size", "128",
        "--from", "shapes:1", "--targets", "onnx-fp32", "--wait",
    )  # fmt: skip
    assert j["state"] == "succeeded" and j["result"]["model"] == "shapes:3"
    r = server.http.get("/api/v1/models/shapes/versions/3").json()
    assert r["lineage"]["fine_tuned_from"] == "shapes:1"
    scratch = next(e for e in server.http.get(f"/api/v1/jobs/{trained['id']}").json()["log"] if e["event"] == "epoch")
    tuned = next(e for e in j["log"] if e["event"] == "epoch")
    assert tuned["loss"] < scratch["loss"], "fine-tuning starts from the trained weights"


def test_bad_job_requests_are_refused_with_reasons(server: Server, trained: dict) -> None:
    h = server.http
    r = h.post("/api/v1/jobs/train", json={"dataset": "nope", "name": "x"})
    assert r.status_code == 404 and "no dataset named 'nope'" in r.json()["detail"]
    r = h.post("/api/v1/jobs/train", json={"dataset": "shapes", "name": "x", "model": "resnet18"})
    assert r.status_code == 422 and "classify model" in r.json()["detail"]
    r = h.post("/api/v1/jobs/train", json={"dataset": "shapes", "name": "x", "targets": ["coreml"]})
    assert r.status_code == 422 and "unknown targets" in r.json()["detail"]
    r = h.post("/api/v1/jobs/compile", json={"ref": "shapes:99"})
    assert r.status_code == 404
    r = h.post("/api/v1/datasets/x/synthesize", json={"preset": "foggy"})
    assert r.status_code == 422 and "unknown preset" in r.json()["detail"]
    assert (
        h.post("/api/v1/jobs/train", json={"dataset": "shapes", "name": "x"}, headers={"Authorization": ""}).status_code
        == 401
    )


def test_a_running_job_can_be_cancelled(server: Server, trained: dict) -> None:
    before = len(server.http.get("/api/v1/models").json())
    job = _json(server, "train", "--dataset", "shapes", "--name", "long", "--epochs", "500", "--size", "128")
    wait_for(lambda: server.http.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "running", 30, "job running")
    out = server.cli("jobs", "cancel", str(job["id"])).stdout
    assert f"job {job['id']}" in out
    done = wait_for(
        lambda: (j := server.http.get(f"/api/v1/jobs/{job['id']}").json())["state"] in ("cancelled", "failed") and j,
        30,
        "job cancelled",
    )
    assert done["state"] == "cancelled"
    assert len(server.http.get("/api/v1/models").json()) == before
    assert f"job {job['id']}" in server.cli("jobs", "list").stdout


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_dataset_import_and_export_over_http(server: Server, trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "export"
    server.cli("datasets", "export", "shapes:1", "--format", "coco", "--out", str(out))
    folder = out / "shapes-v1-coco"
    assert (folder / "annotations.json").is_file() and len(list((folder / "images").iterdir())) == 160
    d = _json(server, "datasets", "import", "copy", str(folder), "--format", "coco")
    original = server.http.get("/api/v1/datasets/shapes/versions/1").json()
    assert d["name"] == "copy" and d["version"] == 1 and d["id"] == original["id"], "same content, same id"

    # a box outside its image: refused with the file and line, nothing stored
    doc = json.loads((folder / "annotations.json").read_text())
    doc["annotations"][3]["bbox"] = [100, 100, 90, 90]
    (folder / "annotations.json").write_text(json.dumps(doc, indent=1))
    r = server.cli("datasets", "import", "bad", str(folder), "--format", "coco", check=False)
    assert r.returncode != 0 and "HTTP 422" in r.stderr
    assert "annotations.json:" in r.stderr and "outside the 128x128 image" in r.stderr
    assert str(tmp_path) not in r.stderr, "server paths are not echoed"
    assert server.http.get("/api/v1/datasets/bad/versions").status_code == 404

    img = encode_image(np.zeros((40, 40, 3), np.uint8), ".png")
    h = server.http
    evil = _tar({"../../escape.txt": b"x", "ds/classes.txt": b"a\n", "ds/images/a.png": img})
    r = h.post("/api/v1/datasets/evil/import", params={"format": "yolo"}, content=evil)
    assert r.status_code == 422 and "tar" in r.json()["detail"].lower()
    assert not (server.data_dir.parent / "escape.txt").exists()
    r = h.post("/api/v1/datasets/junk/import", params={"format": "yolo"}, content=b"not a tar archive at all")
    assert r.status_code == 422 and "not a readable tar archive" in r.json()["detail"]
    r = h.post("/api/v1/datasets/big/import", params={"format": "yolo"}, content=b"\0" * 3_100_000)
    assert r.status_code == 413
    ok = _tar({"ds/classes.txt": b"a\n", "ds/images/a.png": img, "ds/labels/a.txt": b"0 0.5 0.5 0.5 0.5\n"})
    r = h.post("/api/v1/datasets/tiny/import", params={"format": "yolo"}, content=ok)
    assert r.status_code == 201 and r.json()["samples"] == 1
    assert "tiny:1" in server.cli("datasets", "list").stdout


def test_flywheel_turn_review_retrain_gate_and_approve(server: Server, trained: dict, tmp_path: Path) -> None:
    """Hard samples from a device in a shifted domain, labelled by a simulated annotator (exact boxes from
    the generator), a retrain policy that fires at N labels, the evaluation gate, and an approved rollout."""
    import httpx

    from model_zoo.datasets.synthetic_scenes import preset, render_scene

    dev = server.enroll("fly-cam-9")
    classes = ["circle", "square", "triangle"]
    ids = []
    for i in range(6):
        sc = render_scene(preset("night"), 77, i, (128, 128))
        jpeg = encode_image(sc.image, ".jpg")
        r = httpx.post(
            f"{server.url}/api/v1/devices/fly-cam-9/samples",
            headers={"Authorization": f"Bearer {dev['token']}"},
            files={"image": ("s.jpg", jpeg, "image/jpeg")},
            data={"meta": json.dumps({"strategy": "confidence", "model": "shapes", "version": 1})},
        )
        assert r.status_code == 201, r.text
        pairs = zip(sc.boxes, sc.labels, strict=True)
        truth = [{"label": classes[c], "box": [float(v) for v in b]} for b, c in pairs]
        ids.append(r.json()["id"])
        rv = server.http.post(f"/api/v1/samples/{r.json()['id']}/review", json={"action": "correct", "labels": truth})
        assert rv.status_code == 200 and rv.json()["state"] == "corrected"
    bad = server.http.post(
        f"/api/v1/samples/{ids[0]}/review",
        json={"action": "correct", "labels": [{"label": "circle", "box": [0, 0, 500, 9]}]},
    )
    assert bad.status_code == 422 and "outside" in bad.json()["detail"]

    # export for an outside tool and take the labels back unchanged
    exp = server.http.get("/api/v1/samples-export", params={"state": "corrected", "classes": ",".join(classes)})
    assert exp.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(exp.content), mode="r:gz") as tf:
        doc = json.loads(tf.extractfile("samples-corrected/annotations.json").read())  # type: ignore[union-attr]
    assert {im["file_name"] for im in doc["images"]} == {f"{i}.jpg" for i in ids}
    yolo = server.cli("samples", "export", "--state", "corrected", "--format", "yolo", "--out", str(tmp_path / "y"))
    assert "as yolo" in yolo.stdout
    from model_zoo.datasets.formats import load_yolo

    y_classes, y_samples = load_yolo(tmp_path / "y" / "samples-corrected")
    assert len(y_samples) == 6 and set(y_classes) <= set(classes)
    assert sum(len(x.boxes) for x in y_samples) == len(doc["annotations"])
    back = server.http.post("/api/v1/samples-import", content=json.dumps(doc))
    assert back.status_code == 200 and back.json()["updated"] == 6

    policy = {"dataset": "shapes", "min_new_labels": 6, "epochs": 1, "budget_points": 100, "rollout": "approve"}
    assert server.http.put("/api/v1/flywheel/policies/shapes", json=policy).status_code == 200
    server.http.post("/api/v1/flywheel/check")
    job = wait_for(
        lambda: next((j for j in server.http.get("/api/v1/jobs").json() if j["kind"] == "retrain"), None),
        30,
        "a retrain job queued by the policy",
    )
    done = wait_for(
        lambda: (j := server.http.get(f"/api/v1/jobs/{job['id']}").json())["state"] in ("succeeded", "failed") and j,
        240,
        "the retrain job",
    )
    assert done["state"] == "succeeded", done
    gate = done["result"]["gate"]
    assert gate["passed"] and gate["holdout_dataset"] == "shapes:1"
    assert set(gate["holdout"]) == {"current", "candidate", "delta_points"}
    assert done["result"]["awaiting_approval"] is True
    ref = done["result"]["model"]
    r = server.http.get(f"/api/v1/models/shapes/versions/{ref.split(':')[1]}").json()
    assert r["lineage"]["holdout"] == "shapes:1" and r["lineage"]["dataset"] == done["params"]["dataset_ref"]
    ds = server.http.get(f"/api/v1/datasets/shapes/versions/{done['params']['dataset_version']}").json()
    assert ds["samples"] == 166 and ds["parent"] == "shapes:1"
    samples = server.http.get("/api/v1/samples", params={"device": "fly-cam-9"}).json()["samples"]
    assert all(s["state"] == "corrected" for s in samples)
    ok = server.http.post(f"/api/v1/flywheel/approve/{job['id']}")
    assert ok.status_code == 200 and ok.json()["model"] == ref
    rollout = server.http.get(f"/api/v1/rollouts/{ok.json()['rollout']}").json()
    assert f"{rollout['model']}:{rollout['version']}" == ref
    assert server.http.post(f"/api/v1/flywheel/approve/{job['id']}").status_code == 409, "approved once"
    assert "corrected" in server.cli("samples", "list", "--device", "fly-cam-9").stdout
    assert "dataset=shapes min_new_labels=6" in server.cli("flywheel", "policies").stdout
    server.cli("flywheel", "policy", "shapes", "--dataset", "shapes", "--disable")
    assert server.http.get("/api/v1/flywheel/policies").json()[0]["enabled"] is False


def _pids(*needles: str) -> list[int]:
    """The processes whose command line holds every one of `needles`."""
    import os

    pids = []
    for d in os.listdir("/proc"):
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if all(n in cmd for n in needles):
            pids.append(int(d))
    return pids


def _training_past_its_first_epoch(server: Server, name: str, epochs: int) -> int:
    """A small training job, once it has written its first epoch (and so a checkpoint): its id."""
    server.cli("datasets", "synth", name, "--count", "100", "--width", "128", "--height", "128", "--wait")
    job = _json(server, "train", "--dataset", name, "--name", name, "--epochs", str(epochs), "--size", "128",
                "--targets", "onnx-fp32")  # fmt: skip
    jid = int(job["id"])
    wait_for(
        lambda: any(e.get("event") == "epoch" for e in server.http.get(f"/api/v1/jobs/{jid}").json().get("log", [])),
        60,
        "the first epoch",
    )
    return jid


def test_a_training_job_survives_a_clean_stop_and_a_crash_and_resumes_each_time(tmp_path: Path, mosquitto: str) -> None:
    """Two ways a server goes away mid-training. SIGTERM to its process group (Ctrl-C, `make` stopping, a
    container stop): the job is not failed but requeued, and the next start resumes it. Then SIGKILL: its worker
    dies with it (no orphan keeps writing), the job's lease lapses, and the restarted server resumes the run
    from its last checkpoint again. Every epoch runs once in all, and the version is registered once."""
    import os
    import signal

    env = {"EDGELOOP_JOB_LEASE_S": "3"}
    a = Server(tmp_path / "data", mosquitto, env=env)
    jid = _training_past_its_first_epoch(a, "crash", 12)
    port = a.port
    os.killpg(a.proc.p.pid, signal.SIGTERM)
    a.proc.p.wait(30)
    a.http.close()
    b = Server(tmp_path / "data", mosquitto, env={**env, "EDGELOOP_RUN_JOBS": "false"}, port=port)
    try:
        row = b.http.get(f"/api/v1/jobs/{jid}").json()
        assert row["state"] == "queued" and "requeued" in row["message"], row
    finally:
        b.stop()

    c = Server(tmp_path / "data", mosquitto, env=env, port=port)
    job_dir = str(tmp_path / "data" / "jobs" / str(jid))
    log = lambda srv: srv.http.get(f"/api/v1/jobs/{jid}", params={"tail": 1000}).json()  # noqa: E731
    first = len([e for e in log(c)["log"] if e.get("event") == "epoch"])
    wait_for(
        lambda: len([e for e in log(c)["log"] if e.get("event") == "epoch"]) > first, 90, "an epoch after resuming"
    )
    c.proc.stop(signal.SIGKILL)
    c.http.close()

    def workers() -> list[int]:
        return _pids(job_dir, "fleet_server.jobs.worker") + _pids(job_dir, "model_zoo.train")

    wait_for(lambda: not workers(), 10, "the worker to die with its server")
    d = Server(tmp_path / "data", mosquitto, env=env, port=port)
    try:
        done = wait_for(lambda: (j := log(d))["state"] in ("succeeded", "failed") and j, 180, "the resumed job")
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2 and done["result"]["model"] == "crash:1"  # the clean stop cost no attempt
        assert sum("resuming" in e.get("message", "") for e in done["log"]) == 2, [
            e for e in done["log"] if "resum" in str(e)
        ]
        epochs = [json.loads(ln)["epoch"] for ln in open(f"{job_dir}/run/metrics.jsonl")]
        assert set(epochs) == set(range(1, 13)), epochs
        assert [m["version"] for m in d.http.get("/api/v1/models").json() if m["name"] == "crash"] == [1]
    finally:
        d.stop()


def test_a_worker_that_dies_fails_the_job_with_its_log_tail_and_a_retry_resumes_it(
    server: Server, trained: dict
) -> None:
    """The training process is killed mid-run (the kernel's OOM killer, a node lost): the job fails at once,
    saying how it died and what it printed last; `edgeloop jobs retry` runs it again under the same id, from its
    last checkpoint, and every epoch is trained once in all."""
    import os
    import signal

    job = _json(server, "train", "--dataset", "shapes:1", "--name", "dies", "--epochs", "5", "--size", "96",
                "--targets", "onnx-fp32")  # fmt: skip
    jid = int(job["id"])
    log = lambda: server.http.get(f"/api/v1/jobs/{jid}", params={"tail": 1000}).json()  # noqa: E731
    wait_for(lambda: any(e.get("event") == "epoch" for e in log().get("log", [])), 120, "the first epoch")
    run = server.data_dir / "jobs" / str(jid) / "run"

    for pid in wait_for(lambda: _pids(str(run), "model_zoo.train"), 10, "the training process"):
        os.kill(pid, signal.SIGKILL)
    failed = wait_for(lambda: (j := _json(server, "jobs", "show", str(jid)))["state"] != "running" and j, 60, "fail")
    assert failed["state"] == "failed" and failed["message"].startswith("training was killed by SIGKILL"), failed
    r = server.cli("jobs", "retry", str(jid))
    assert "queued" in r.stdout
    _json(server, "jobs", "watch", str(jid))
    done = server.http.get(f"/api/v1/jobs/{jid}", params={"tail": 1000}).json()
    assert done["state"] == "succeeded" and done["result"]["model"] == "dies:1", done
    assert any("resuming from the last checkpoint" in e.get("message", "") for e in done["log"])
    epochs = [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").open()]
    assert sorted(epochs) == list(range(1, 6)), epochs  # nothing trained twice, nothing skipped
    assert server.http.post(f"/api/v1/jobs/{jid}/retry").status_code == 409  # a succeeded job is not retried
