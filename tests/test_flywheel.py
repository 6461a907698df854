"""Hard samples from the edge: miners choose frames, limits and the near-duplicate filter keep the stream
worth a person's time, the spool survives kill -9 and a full disk without stopping the camera, and the
server takes uploads only from the device they claim to be, only as real JPEG/PNG images of sane size,
storing each scene once. If any of this breaks, samples are lost, duplicated or unsafe to open."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.camera.loop import FrameResult
from edge_agent.decoders.results import Classification, Detections
from edge_agent.flywheel.config import Limits, MiningConfig, StrategyConfig
from edge_agent.flywheel.miners import build_miner
from edge_agent.flywheel.phash import HashIndex, hamming, phash
from edge_agent.flywheel.sink import MiningSink
from edge_agent.flywheel.spool import Spool
from model_zoo.datasets.synthetic_scenes import preset, render_scene
from tests.helpers import Server, start_agent, wait_for

SCENE = render_scene(preset("medium"), 3, 0, (320, 240)).image


def _det(scores: list[float], classes: list[int] | None = None) -> Detections:
    n = len(scores)
    boxes = np.tile(np.array([[10, 10, 50, 50]], np.float32), (n, 1))
    return Detections(boxes, np.array(scores, np.float32), np.array(classes or [0] * n, np.int64))


def _fr(result, image: np.ndarray = SCENE, source: str = "cam0", index: int = 0) -> FrameResult:  # type: ignore[no-untyped-def]
    return FrameResult(source, index, "shapes", 1, result, 3.0, 10.0, image)


def test_perceptual_hash_finds_the_same_scene_and_separates_others() -> None:
    ok, buf = cv2.imencode(".jpg", SCENE, [cv2.IMWRITE_JPEG_QUALITY, 60])
    recoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    noisy = np.clip(SCENE.astype(np.int16) + np.random.default_rng(0).integers(-8, 9, SCENE.shape), 0, 255)
    assert hamming(phash(SCENE), phash(recoded)) <= 4
    assert hamming(phash(SCENE), phash(noisy.astype(np.uint8))) <= 6
    others = [render_scene(preset("medium"), 3, i, (320, 240)).image for i in range(1, 9)]
    assert min(hamming(phash(SCENE), phash(o)) for o in others) > 10
    idx = HashIndex(100_000)
    rng = np.random.default_rng(1)
    for h in rng.integers(0, 2**63, 99_999, dtype=np.int64):
        idx.add(int(h))
    idx.add(phash(SCENE))
    assert idx.nearest(phash(recoded)) <= 4 and len(idx) == 100_000


def test_miners_fire_on_what_they_promise() -> None:
    band = build_miner("confidence", {"low": 0.3, "high": 0.6})
    assert band.check(_fr(_det([0.9, 0.45]))) is not None and band.check(_fr(_det([0.9, 0.7]))) is None
    margin = build_miner("margin", {"max_margin": 0.1})
    assert margin.check(_fr(Classification(np.array([0.46, 0.44, 0.1], np.float32)))) is not None
    assert margin.check(_fr(Classification(np.array([0.8, 0.1, 0.1], np.float32)))) is None
    flicker = build_miner("flicker", {})
    seq = [_det([0.9], [1]), _det([]), _det([0.9], [1])]
    assert [flicker.check(_fr(r, index=i)) is not None for i, r in enumerate(seq)] == [False, False, True]
    rare = build_miner("rare", {"max_share": 0.05, "min_seen": 50})
    for i in range(60):
        assert rare.check(_fr(_det([0.9], [0]), index=i)) is None
    assert "class 2" in (rare.check(_fr(_det([0.9], [2]))) or "")
    rnd = build_miner("random", {"share": 0.1, "seed": 3})
    hits = sum(rnd.check(_fr(_det([]))) is not None for _ in range(2000))
    assert 150 < hits < 250
    with pytest.raises(ValueError, match="unknown miner"):
        build_miner("vibes", {})


def _sink(tmp_path: Path, **over) -> MiningSink:  # type: ignore[no-untyped-def]
    cfg = MiningConfig(
        enabled=True,
        strategies={"confidence": StrategyConfig(params={"low": 0.0, "high": 1.0}, limits=Limits(per_minute=3))},
        **{"min_interval_s": 0.0, **over},
    )
    return MiningSink(cfg, Spool(tmp_path / "spool"), "cam-1", lambda m, v: ("circle", "square", "triangle"))


def test_rate_limits_dedup_and_diversity_budget(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink(_fr(_det([0.5])))
    sink(_fr(_det([0.5])))  # the same scene again: a near-duplicate
    assert sink.counters["spooled"] == 1 and sink.counters["duplicates"] == 1
    for i in range(1, 6):
        sink(_fr(_det([0.5]), render_scene(preset("medium"), 3, i, (320, 240)).image, index=i))
    assert sink.counters["spooled"] == 3 and sink.counters["rate_limited"] == 3  # 3 per minute
    pending = sink.spool.due()
    assert len(pending) == 3 and pending[0].meta["predictions"][0]["label"] == "circle"
    assert pending[0].meta["strategy"] == "confidence" and pending[0].meta["device_id"] == "cam-1"

    budget = _sink(tmp_path / "b", per_source_per_hour=2)
    for i in range(4):
        budget(_fr(_det([0.5]), render_scene(preset("medium"), 4, i, (320, 240)).image, source="cam7", index=i))
    assert budget.counters["spooled"] == 2 and budget.counters["rate_limited"] == 2


def test_neighbouring_frames_of_a_camera_are_skipped_cheaply(tmp_path: Path) -> None:
    sink = _sink(tmp_path, min_interval_s=60.0)
    for i in range(5):
        sink(_fr(_det([0.5]), render_scene(preset("medium"), 6, i, (320, 240)).image, index=i))
    sink(_fr(_det([0.5]), render_scene(preset("medium"), 6, 9, (320, 240)).image, source="cam1"))
    assert sink.counters["spooled"] == 2 and sink.counters["cooldown"] == 4  # one per camera per minute


def test_a_failing_disk_does_not_stop_mining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _sink(tmp_path)

    def full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    sink(_fr(_det([0.5])))  # must not raise into the camera loop's sink thread
    assert sink.counters["spool_errors"] == 1 and sink.spool.pending() == 0
    monkeypatch.undo()
    sink(_fr(_det([0.5]), render_scene(preset("medium"), 5, 0, (320, 240)).image))
    assert sink.counters["spooled"] == 1


def test_quota_evicts_random_baseline_first_and_counts_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, quota_bytes=3000)
    keys = [spool.put(os.urandom(900) + bytes([i]), s, {}) for i, s in enumerate(["confidence", "random", "flicker"])]
    assert spool.pending() == 3
    spool.put(os.urandom(900), "rare", {})
    left = {p.key for p in spool.due()}
    assert keys[1] not in left and keys[0] in left and spool.evicted == 1 and spool.bytes_used() <= 3000
    assert not (tmp_path / "images" / f"{keys[1]}.jpg").exists()


WRITER = """
import os, sys
from pathlib import Path
from edge_agent.flywheel.spool import Spool
s = Spool(Path(sys.argv[1]))
i = 0
while True:
    key = s.put(os.urandom(20000) + i.to_bytes(4, "big"), "confidence", {"i": i})
    print(key, flush=True)
    i += 1
"""


def test_spool_survives_kill_9_without_losing_an_accepted_sample(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    accepted = []
    deadline = time.monotonic() + 30
    while len(accepted) < 150 and time.monotonic() < deadline:
        accepted.append(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    spool = Spool(tmp_path)
    on_disk = {p.key for p in spool.due(limit=100_000)}
    assert set(accepted) <= on_disk, "every sample put() returned for is still there"
    files = {p.stem for p in (tmp_path / "images").iterdir()}
    assert files == on_disk, "no orphan or temp files, no row without its image"
    assert spool.lost == 0


# -- through the real server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, mosquitto: str) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("fly") / "data", mosquitto, env={"EDGELOOP_MAX_SAMPLE_BYTES": "400000"})
    yield s
    s.stop()


def _upload(server: Server, device: str, token: str, data: bytes, ctype: str = "image/jpeg", meta: dict | None = None):  # type: ignore[no-untyped-def]
    import httpx

    return httpx.post(
        f"{server.url}/api/v1/devices/{device}/samples",
        headers={"Authorization": f"Bearer {token}"},
        files={"image": ("x.jpg", data, ctype)},
        data={"meta": json.dumps(meta or {"strategy": "confidence", "predictions": [{"label": "a", "score": 0.4}]})},
        timeout=10,
    )


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = zlib.compress(b"\0" * 64)
    idat = b"IDAT" + body
    iend = b"IEND"
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(body)) + idat + struct.pack(">I", zlib.crc32(idat))
        + struct.pack(">I", 0) + iend + struct.pack(">I", zlib.crc32(iend))
    )  # fmt: skip


def test_uploads_are_checked_and_stored_once(fleet: Server) -> None:
    a, b = fleet.enroll("fly-a"), fleet.enroll("fly-b")
    jpeg = cv2.imencode(".jpg", SCENE)[1].tobytes()
    r = _upload(fleet, "fly-a", a["token"], jpeg)
    assert r.status_code == 201 and r.json()["stored"] is True
    sid = r.json()["id"]
    again = _upload(fleet, "fly-a", a["token"], jpeg)
    assert again.status_code == 200 and again.json()["id"] == sid and "already received" in again.json()["duplicate"]
    recoded = cv2.imencode(".jpg", SCENE, [cv2.IMWRITE_JPEG_QUALITY, 55])[1].tobytes()
    twin = _upload(fleet, "fly-b", b["token"], recoded)  # same scene from another device
    assert twin.status_code == 200 and "near-duplicate" in twin.json()["duplicate"]

    bad = [
        (_upload(fleet, "fly-b", a["token"], jpeg), 403),  # another device's identity
        (_upload(fleet, "fly-a", "nope", jpeg), 401),
        (_upload(fleet, "fly-a", a["token"], b"GIF89a" + b"\0" * 100, "image/gif"), 415),
        (_upload(fleet, "fly-a", a["token"], jpeg[: len(jpeg) // 2]), 422),  # truncated
        (_upload(fleet, "fly-a", a["token"], jpeg[: len(jpeg) // 2] + b"\xff\xd9"), 422),  # truncated, EOI added
        (_upload(fleet, "fly-a", a["token"], _png_header(60000, 60000), "image/png"), 413),  # a bomb
        (_upload(fleet, "fly-a", a["token"], os.urandom(500_000)), 413),  # over the body cap
        (_upload(fleet, "fly-a", a["token"], jpeg, meta={"strategy": "DROP TABLE"}), 422),
    ]
    for resp, code in bad:
        assert resp.status_code == code, (code, resp.text)
    import httpx

    raw = httpx.post(
        f"{fleet.url}/api/v1/devices/fly-a/samples",
        headers={"Authorization": f"Bearer {a['token']}", "content-type": "image/jpeg"},
        content=jpeg,
    )
    assert raw.status_code == 415
    assert fleet.http.get("/api/v1/samples", params={"label": "a"}).json()["samples"][0]["id"] == sid
    assert fleet.http.get("/api/v1/samples", params={"label": "zebra"}).json()["samples"] == []
    assert fleet.http.get("/api/v1/samples", params={"since": "2999-01-01T00:00:00Z"}).json()["samples"] == []
    listed = fleet.http.get("/api/v1/samples").json()["samples"]
    assert [s["id"] for s in listed] == [sid], "nothing but the one good upload was stored"
    s = listed[0]
    assert s["device_id"] == "fly-a" and s["predictions"] == [{"label": "a", "score": 0.4, "box": None}]
    img = fleet.http.get(s["image_url"])
    assert img.status_code == 200 and img.content[:3] == b"\xff\xd8\xff"
    assert len(list((fleet.data_dir / "samples").rglob("*.jpg"))) == 1


def test_agent_mines_spools_through_a_server_outage_and_uploads_everything(
    fleet: Server, assets: dict, tmp_path: Path, mosquitto: str
) -> None:
    fleet.push(assets["model_v1"], name="flycolors")
    enrolled = fleet.enroll("fly-cam")
    mining = {
        "enabled": True,
        "strategies": {"confidence": {"params": {"low": 0.0, "high": 1.0}, "limits": {"per_minute": 600}}},
        "dedup_distance": 2,
    }
    agent = start_agent(tmp_path, enrolled, str(assets["video"]))  # mining comes with the desired state
    try:
        fleet.cli("deploy", "flycolors:1", "--device", "fly-cam", "--health-window", "0.5")
        assert fleet.http.put("/api/v1/devices/fly-cam/mining", json={**mining, "enabled": "maybe"}).status_code == 422
        r = fleet.http.put("/api/v1/devices/fly-cam/mining", json=mining)
        assert r.status_code == 200 and r.json()["mining"]["strategies"]["confidence"]["params"]["high"] == 1.0
        mine = {"device": "fly-cam"}
        wait_for(lambda: fleet.http.get("/api/v1/samples", params=mine).json()["samples"], 40, "samples")
        fleet.proc.stop(signal.SIGKILL)  # the server dies; the agent keeps mining into its spool
        import sqlite3

        def pending() -> int:  # read-only look at the agent's spool (opening a Spool would run its recovery)
            with sqlite3.connect(f"file:{tmp_path / 'agent-data' / 'spool' / 'spool.db'}?mode=ro", uri=True) as db:
                return int(db.execute("SELECT COUNT(*) FROM sample").fetchone()[0])

        wait_for(lambda: pending() >= 2, 30, "samples waiting in the spool while the server is down")
        restarted = Server(fleet.data_dir, mosquitto, port=fleet.port, env={"EDGELOOP_MAX_SAMPLE_BYTES": "400000"})
        fleet.proc, fleet.http = restarted.proc, restarted.http

        def drained() -> dict | None:
            d = fleet.device("fly-cam")
            fw = d.get("flywheel") or {}
            return fw if fw.get("pending") == 0 and fw.get("spooled", 0) >= 3 else None

        fw = wait_for(drained, 60, "the spool drained after the server came back")
        assert fw["refused"] == 0
        stored = fleet.http.get("/api/v1/samples", params={"device": "fly-cam", "limit": 1000}).json()["samples"]
        assert stored and all(s["model"] == "flycolors" and s["strategy"] == "confidence" for s in stored)
        assert all(s["predictions"] and s["predictions"][0]["label"] in ("red", "green", "blue") for s in stored)
    finally:
        agent.stop()


def test_review_never_blocks_on_one_bad_box(fleet: Server) -> None:
    """Device boxes poking out of the image are clipped at ingest and boxes wholly outside are dropped with a
    note; a bulk accept reviews every sample it can and names each one it could not, with why (here one
    stored by an older server, before clipping, with a box outside its image)."""
    import sqlite3

    import cv2

    dev = fleet.enroll("box-cam")
    ids = []
    for seed in range(3):
        img = (np.random.default_rng(100 + seed).random((240, 320, 3)) * 255).astype(np.uint8)
        meta = {
            "strategy": "confidence",
            "predictions": [
                {"label": "a", "score": 0.9, "box": [300, 200, 330, 250]},  # pokes out: clipped
                {"label": "a", "score": 0.9, "box": [400, 300, 500, 400]},  # wholly outside: dropped
            ],
        }
        r = _upload(fleet, "box-cam", dev["token"], cv2.imencode(".jpg", img)[1].tobytes(), meta=meta)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    s = fleet.http.get(f"/api/v1/samples/{ids[0]}").json()
    assert s["predictions"] == [{"label": "a", "score": 0.9, "box": [300.0, 200.0, 320.0, 240.0]}]
    assert "1 box(es) outside the image dropped" in s["reason"]
    legacy = json.dumps([{"label": "a", "score": 0.9, "box": [300, 200, 330, 250]}])
    with sqlite3.connect(fleet.data_dir / "edgeloop.db") as db:  # as an older server stored it
        db.execute("UPDATE sample SET predictions_json = ? WHERE id = ?", (legacy, ids[1]))
    r = fleet.http.post("/api/v1/samples/review", json={"ids": ids, "action": "accept"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reviewed"] == 2 and [f["id"] for f in body["failed"]] == [ids[1]]
    assert "outside the 320x240 image" in body["failed"][0]["reason"]
    states = {i: fleet.http.get(f"/api/v1/samples/{i}").json()["state"] for i in ids}
    assert states == {ids[0]: "accepted", ids[1]: "new", ids[2]: "accepted"}
