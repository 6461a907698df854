"""The agent's local endpoints: what an operator's curl, a Prometheus scraper and a browser preview see."""

from __future__ import annotations

from pathlib import Path

import cv2
import httpx
import numpy as np

from edge_agent.camera.loop import InferenceLoop
from edge_agent.camera.sources import FrameSource
from edge_agent.config import AgentConfig
from edge_agent.endpoints import Endpoints
from tests.helpers import wait_for
from tests.test_camera import _load


def test_endpoints_are_off_and_local_by_default() -> None:
    cfg = AgentConfig.load(
        None,
        {
            "device_id": "d",
            "server_url": "http://s",
            "mqtt_url": "mqtt://b",
            "token": "t",
            "root_public_key": "k",
            "sources": ["0"],
        },
    )
    assert cfg.endpoints.enabled is False and cfg.endpoints.host == "127.0.0.1"


def test_healthz_metrics_preview(assets: dict[str, Path]) -> None:
    src = FrameSource(str(assets["video"]), name="dock").start()
    loop = InferenceLoop([src]).start()
    ep = Endpoints(loop, lambda: {"state": "committed"}, "127.0.0.1", 0, preview_fps=30).start()
    base = f"http://127.0.0.1:{ep.port}"
    try:
        r = httpx.get(base + "/healthz")
        assert r.status_code == 503 and r.json()["model"] is None  # no model serving yet
        loop.swap(_load(assets["model_v1"], 1))
        wait_for(lambda: httpx.get(base + "/healthz").status_code == 200, 10, "healthy")
        body = httpx.get(base + "/healthz").json()
        assert body["model"] == "colors:1" and body["sources_up"] == 1

        text = httpx.get(base + "/metrics").text
        assert 'edgeloop_source_up{source="dock"} 1' in text
        assert 'edgeloop_model_info{model="colors",version="1"} 1' in text
        fps = float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("edgeloop_inference_fps ")))
        assert fps > 5
        # per camera: its own result rate and staleness, parsed as Prometheus does
        from prometheus_client.parser import text_string_to_metric_families

        per = {(x.name, x.labels.get("quantile")): x.value for f in text_string_to_metric_families(text)
               for x in f.samples if x.labels.get("source") == "dock"}  # fmt: skip
        assert per[("edgeloop_source_infer_fps", None)] > 5 and per[("edgeloop_source_staleness_ms", "0.99")] > 0
        assert ("edgeloop_source_reconnects_total", None) in per and ("edgeloop_source_queue_depth", None) in per

        with httpx.stream("GET", base + "/preview", timeout=10) as resp:
            assert resp.headers["content-type"].startswith("multipart/x-mixed-replace")
            buf = b""
            for chunk in resp.iter_bytes():
                buf += chunk
                if buf.count(b"\xff\xd9") >= 2:
                    break
        start, end = buf.index(b"\xff\xd8"), buf.index(b"\xff\xd9") + 2
        img = cv2.imdecode(np.frombuffer(buf[start:end], np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (240, 320, 3)
        assert httpx.get(base + "/preview?source=nope").status_code == 404
        assert httpx.get(base + "/other").status_code == 404
    finally:
        ep.stop()
        loop.stop()
        src.stop()
