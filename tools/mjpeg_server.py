"""A real HTTP MJPEG camera (multipart/x-mixed-replace) for tests and benchmarks: it can stall (keep the
connection open, send nothing), go away, and come back on the same port."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np


class MjpegCamera:
    def __init__(self, port: int = 0, fps: float = 30.0, colour_bgr: tuple[int, int, int] = (0, 0, 200)) -> None:
        self.stall = threading.Event()
        self.closed = False
        self.fps = fps
        self.colour = colour_bgr
        cam = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not cam.closed:
                        if cam.stall.is_set():
                            time.sleep(0.05)
                            continue
                        img = np.zeros((120, 160, 3), np.uint8)
                        img[:] = cam.colour
                        cv2.putText(img, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
                        jpg = cv2.imencode(".jpg", img)[1].tobytes()
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                        self.wfile.write(head + jpg + b"\r\n")
                        i += 1
                        time.sleep(1 / cam.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.srv.daemon_threads = True
        self.port = int(self.srv.server_address[1])
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"

    def close(self) -> None:
        self.closed = True
        self.srv.shutdown()
        self.srv.server_close()
