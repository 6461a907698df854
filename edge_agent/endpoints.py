"""Local HTTP endpoints on the agent: /healthz, /metrics (Prometheus text), /preview (MJPEG with the
results drawn). Off by default; bound to localhost unless configured otherwise."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from edge_agent.camera.loop import FrameResult, InferenceLoop
from edge_agent.decoders.results import Classification

log = logging.getLogger(__name__)
BOUNDARY = "edgeloopframe"


def draw(fr: FrameResult, classes: tuple[str, ...]) -> np.ndarray:
    """The frame with boxes / the top label drawn on a copy."""
    img = fr.image.copy()
    res = fr.result
    if isinstance(res, Classification):
        i = res.top1
        text = f"{classes[i] if i < len(classes) else i} {float(res.scores[i]):.2f}"
        cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3)
        cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1)
        return img
    for k in range(len(res)):
        x1, y1, x2, y2 = (int(v) for v in res.xyxy[k])
        c = int(res.class_ids[k])
        colour = tuple(int(v) for v in np.random.default_rng(c).integers(64, 256, 3))
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
        label = f"{classes[c] if c < len(classes) else c} {float(res.scores[k]):.2f}"
        cv2.putText(img, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1)
    return img


class Endpoints:
    def __init__(
        self, loop: InferenceLoop, status: Callable[[], dict[str, Any]], host: str, port: int, preview_fps: float = 10.0
    ) -> None:
        self.loop, self.status, self.preview_fps = loop, status, preview_fps
        self._latest: dict[str, FrameResult] = {}
        self._cond = threading.Condition()
        loop.sinks.append(self._sink)
        ep = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                try:
                    if url.path == "/healthz":
                        ep._healthz(self)
                    elif url.path == "/metrics":
                        ep._metrics(self)
                    elif url.path == "/preview":
                        ep._preview(self, parse_qs(url.query).get("source", [None])[0])
                    else:
                        self.send_error(404, "try /healthz, /metrics or /preview")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="endpoints", daemon=True)

    def start(self) -> Endpoints:
        self._thread.start()
        log.info("local endpoints on http://%s:%d (/healthz /metrics /preview)", *self.server.server_address[:2])
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self._cond:
            self._cond.notify_all()

    def _sink(self, fr: FrameResult) -> None:
        with self._cond:
            self._latest[fr.source] = fr
            self._cond.notify_all()

    # -- handlers ----------------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _healthz(self, h: BaseHTTPRequestHandler) -> None:
        st = self.status()
        model = self.loop.model
        sources_up = [s.connected for s in self.loop.sources]
        ok = model is not None and any(sources_up) and self.loop.stats.fps() > 0
        body = {
            "ok": ok,
            "model": model.ref if model else None,
            "state": st.get("state"),
            "sources_up": sum(sources_up),
            "sources": len(sources_up),
            "fps": round(self.loop.stats.fps(), 2),
        }
        self._send(h, 200 if ok else 503, json.dumps(body).encode(), "application/json")

    def _metrics(self, h: BaseHTTPRequestHandler) -> None:
        snap = self.loop.stats.snapshot()
        st = self.status()
        lines = [
            "# HELP edgeloop_inference_fps Inferences per second over the last 5 s.",
            "# TYPE edgeloop_inference_fps gauge",
            f"edgeloop_inference_fps {snap['fps']}",
            "# HELP edgeloop_inference_latency_ms Preprocess + inference + decode time.",
            "# TYPE edgeloop_inference_latency_ms summary",
            *(
                f'edgeloop_inference_latency_ms{{quantile="{q}"}} {snap[k]}'
                for q, k in (("0.5", "latency_ms_p50"), ("0.95", "latency_ms_p95"), ("0.99", "latency_ms_p99"))
            ),
            "# HELP edgeloop_frame_staleness_ms Age of a frame when its result is ready.",
            "# TYPE edgeloop_frame_staleness_ms summary",
            f'edgeloop_frame_staleness_ms{{quantile="0.5"}} {snap["staleness_ms_p50"]}',
            f'edgeloop_frame_staleness_ms{{quantile="0.99"}} {snap["staleness_ms_p99"]}',
            "# TYPE edgeloop_frames_total counter",
            f"edgeloop_frames_total {self.loop.stats.frames}",
            "# TYPE edgeloop_inference_errors_total counter",
            f"edgeloop_inference_errors_total {self.loop.stats.errors}",
            "# TYPE edgeloop_source_up gauge",
            *(f'edgeloop_source_up{{source="{s.name}"}} {int(s.connected)}' for s in self.loop.sources),
            "# TYPE edgeloop_source_dropped_frames_total counter",
            *(f'edgeloop_source_dropped_frames_total{{source="{s.name}"}} {s.dropped}' for s in self.loop.sources),
            "# TYPE edgeloop_source_decode_fps gauge",
            *(f'edgeloop_source_decode_fps{{source="{s.name}"}} {s.decode_fps():.2f}' for s in self.loop.sources),
            *self._per_camera(),
            "# TYPE edgeloop_update_state gauge",
            f'edgeloop_update_state{{state="{st.get("state")}"}} 1',
        ]
        model = self.loop.model
        if model is not None:
            lines += [
                "# TYPE edgeloop_model_info gauge",
                f'edgeloop_model_info{{model="{model.manifest.model}",version="{model.manifest.version}"}} 1',
            ]
        sh = self.loop.shadow
        if sh is not None and sh.agreement is not None:
            lines += ["# TYPE edgeloop_shadow_agreement gauge", f"edgeloop_shadow_agreement {sh.agreement}"]
        self._send(h, 200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    def _per_camera(self) -> list[str]:
        """Each camera's own inference rate, staleness, reconnects and waiting frames (the loop's per_source)."""
        rows = self.loop.per_source()
        out = []
        for name, help_, key, kind in (
            ("edgeloop_source_infer_fps", "Results per second for this camera.", "infer_fps", "gauge"),
            ("edgeloop_source_reconnects_total", "Times this camera was reconnected.", "reconnects", "counter"),
            ("edgeloop_source_queue_depth", "Frames of this camera waiting for inference.", "queue_depth", "gauge"),
        ):
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            out += [f'{name}{{source="{r["name"]}"}} {r[key]}' for r in rows]
        out += ["# HELP edgeloop_source_staleness_ms Age of this camera's frames when their result is ready.",
                "# TYPE edgeloop_source_staleness_ms summary"]  # fmt: skip
        for r in rows:
            out.append(f'edgeloop_source_staleness_ms{{source="{r["name"]}",quantile="0.5"}} {r["staleness_ms_p50"]}')
            out.append(f'edgeloop_source_staleness_ms{{source="{r["name"]}",quantile="0.99"}} {r["staleness_ms_p99"]}')
        return out

    def _preview(self, h: BaseHTTPRequestHandler, source: str | None) -> None:
        names = [s.name for s in self.loop.sources]
        name = source or names[0]
        if name not in names:
            self.send_error_json(h, 404, f"no source {name!r}; have {names}")
            return
        h.send_response(200)
        h.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        h.send_header("Cache-Control", "no-store")
        h.end_headers()
        period = 1.0 / self.preview_fps
        last_index = -1
        while True:
            with self._cond:
                self._cond.wait_for(partial(self._has_new, name, last_index), timeout=1.0)
                fr = self._latest.get(name)
            if fr is None or fr.frame_index == last_index:
                if not self._thread.is_alive():
                    return
                continue
            last_index = fr.frame_index
            model = self.loop.model
            img = draw(fr, model.manifest.classes if model else ())
            jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
            h.wfile.write(
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}\r\n\r\n".encode()
                + jpg
                + b"\r\n"
            )
            time.sleep(period)

    def _has_new(self, name: str, last_index: int) -> bool:
        f = self._latest.get(name)
        return f is not None and f.frame_index != last_index

    def send_error_json(self, h: BaseHTTPRequestHandler, code: int, message: str) -> None:
        self._send(h, code, json.dumps({"error": message}).encode(), "application/json")
