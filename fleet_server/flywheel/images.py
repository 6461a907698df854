"""Untrusted image bytes → a safe, re-encoded JPEG. Only JPEG and PNG are accepted (by magic bytes, then
decoded by those decoders only); the pixel count is read from the header and capped *before* decoding,
so a decompression bomb costs nothing; truncated files are refused."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import simplejpeg


class ImageRejected(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise ImageRejected(422, "corrupt JPEG: bad marker")
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + seg
    raise ImageRejected(422, "corrupt JPEG: no frame header")


def header_size(data: bytes) -> tuple[str, int, int]:
    if data[:3] == b"\xff\xd8\xff":
        w, h = _jpeg_size(data)
        if data.rstrip(b"\0")[-2:] != b"\xff\xd9":
            raise ImageRejected(422, "truncated JPEG (no end-of-image marker)")
        return "jpeg", w, h
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise ImageRejected(422, "corrupt PNG: no IHDR")
        w, h = struct.unpack(">II", data[16:24])
        if b"IEND" not in data[-16:]:
            raise ImageRejected(422, "truncated PNG (no IEND chunk)")
        return "png", w, h
    raise ImageRejected(415, "only JPEG and PNG images are accepted")


def sanitize(data: bytes, max_pixels: int, quality: int = 92) -> tuple[np.ndarray, bytes]:
    """(decoded BGR image, re-encoded JPEG bytes) or ImageRejected."""
    kind, w, h = header_size(data)
    if w <= 0 or h <= 0:
        raise ImageRejected(422, "image has no pixels")
    if w * h > max_pixels:
        raise ImageRejected(413, f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    if kind == "jpeg":
        # strict: libjpeg-turbo's warnings are errors. OpenCV and Pillow decode a JPEG whose scan data stops
        # early (an end-of-image marker appended is enough) and fill the rest grey; this refuses it.
        try:
            img = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
        except ValueError as exc:
            raise ImageRejected(422, f"corrupt or truncated JPEG: {str(exc)[:120]}") from None
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.shape[1] != w or img.shape[0] != h:
        raise ImageRejected(422, "image does not decode")
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageRejected(422, "image cannot be re-encoded")
    return img, buf.tobytes()
