"""Video decode on the GPU where the box has one, the CPU path otherwise; each camera says which one runs.

Three GPU paths, tried in this order for a file, RTSP or HTTP stream:
- a Jetson: an `nvv4l2decoder` GStreamer pipeline (the hardware decoder; frames leave NVMM memory through
  nvvidconv) for RTSP and for MP4/MKV/MOV files of H.264 or H.265;
- an OpenCV built with CUDA: `cv2.cudacodec` (NVDEC), frames downloaded once to system memory for the
  fused preprocess;
- OpenCV's FFmpeg with `CAP_PROP_HW_ACCELERATION` (VAAPI, D3D11, MFX, whatever its FFmpeg was built with):
  OpenCV reports back whether acceleration really took; when it did not, the camera says `cpu`.
USB cameras, MJPEG over HTTP and user pipelines keep the CPU path. A GPU path that fails to open falls back
to the CPU with one log line; the camera's `decoder` says which ran and `decoder_note` why.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

HW_NAMES = {1: "any", 2: "d3d11", 3: "vaapi", 4: "mfx"}  # cv2.VIDEO_ACCELERATION_*
JETSON_CODECS = ("h264", "h265")


def jetson_decode_pipeline(spec: str, codec: str = "h264", latency_ms: int = 200) -> str | None:
    """The GStreamer pipeline that decodes `spec` on a Jetson's hardware decoder, or None where none applies
    (a USB camera, MJPEG over HTTP, a pipeline of the user's own, a container it cannot demux)."""
    if codec not in JETSON_CODECS:
        raise ValueError(f"codec must be one of {', '.join(JETSON_CODECS)}, got {codec!r}")
    tail = (
        f"{codec}parse ! nvv4l2decoder ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
        "video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )
    if spec.startswith(("rtsp://", "rtsps://")):
        depay = "rtph264depay" if codec == "h264" else "rtph265depay"
        return f'rtspsrc location="{spec}" latency={int(latency_ms)} ! {depay} ! {tail}'
    suffix = Path(spec).suffix.lower()
    if "://" in spec or "!" in spec or spec.isdigit() or spec.startswith("/dev/"):
        return None
    demux = {".mp4": "qtdemux", ".mov": "qtdemux", ".mkv": "matroskademux"}.get(suffix)
    if demux is None:
        return None
    return f'filesrc location="{spec}" ! {demux} ! {tail}'


def _cudacodec() -> Any:
    """OpenCV's CUDA video module, present only in a CUDA build (absent from the type stubs too)."""
    return cv2.__dict__.get("cudacodec")


def cudacodec_available() -> bool:
    """OpenCV was built with CUDA video decode and sees a GPU (pip's opencv-python never is)."""
    try:
        return _cudacodec() is not None and cv2.cuda.getCudaEnabledDeviceCount() > 0
    except (cv2.error, AttributeError):
        return False


class CudaCodecCapture:
    """`cv2.cudacodec.VideoReader` behind the VideoCapture calls FrameSource makes: read, get, set (rewind
    only), isOpened, release. Frames come back as BGR numpy arrays."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._reader: Any = self._create()

    def _create(self) -> Any:
        codec = _cudacodec()
        reader = codec.createVideoReader(self.spec)
        with contextlib.suppress(cv2.error, AttributeError):
            reader.set(codec.ColorFormat_BGR)  # OpenCV >= 4.7: BGR straight from the decoder
        return reader

    def isOpened(self) -> bool:  # noqa: N802 - the VideoCapture name
        return self._reader is not None

    def read(self) -> tuple[bool, np.ndarray | None]:
        ok, frame = self._reader.nextFrame()
        if not ok:
            return False, None
        image = frame.download()
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        return True, image

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FPS:
            try:
                return float(self._reader.format().fps)
            except (cv2.error, AttributeError):
                return 0.0
        return 0.0

    def set(self, prop: int, value: float) -> bool:
        if prop == cv2.CAP_PROP_POS_FRAMES and value == 0:  # a looping file: start a new reader
            self._reader = self._create()
            return True
        return False

    def release(self) -> None:
        self._reader = None


def ffmpeg_hw_params() -> list[int]:
    """VideoCapture params asking OpenCV's FFmpeg for any hardware decoder it was built with."""
    accel = getattr(cv2, "CAP_PROP_HW_ACCELERATION", None)
    if accel is None:
        return []
    return [accel, int(getattr(cv2, "VIDEO_ACCELERATION_ANY", 1))]


def ffmpeg_hw_used(cap: Any) -> str | None:
    """Which hardware decoder FFmpeg took for this capture, or None when it decodes on the CPU."""
    accel = getattr(cv2, "CAP_PROP_HW_ACCELERATION", None)
    if accel is None:
        return None
    used = int(cap.get(accel))
    return HW_NAMES.get(used, str(used)) if used > 0 else None
