"""Small test helpers: images as bytes and data URIs, loopback HTTP servers."""

from __future__ import annotations

import base64
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def strided(full: np.ndarray, spec: str) -> np.ndarray:
    """A parity pack's slicing of large references, e.g. ``"[:, ::4, ::4]"`` (steps only)."""
    parts = spec.strip("[]").split(",")
    idx = tuple(
        Ellipsis if p.strip() == "..." else
        slice(*[int(v) if v.strip() else None for v in (p.split(":") + ["", ""])[:3]])
        for p in parts
    )
    return full[idx]


def png_bytes(width: int = 64, height: int = 64, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(width * 1000 + height)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = (220, 40, 40)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def png_data_uri(width: int = 64, height: int = 64) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(width, height)).decode()


class LoopbackServer:
    """A threaded HTTP server on a loopback address; `handler` is a BaseHTTPRequestHandler subclass."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1"):
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def moving_squares(num_frames: int = 14, width: int = 64, height: int = 48) -> np.ndarray:
    """(N, H, W, 3) uint8 frames: a red square moving right, a green one moving left."""
    frames = np.full((num_frames, height, width, 3), 30, np.uint8)
    for i in range(num_frames):
        frames[i, 8:24, 2 + 2 * i:18 + 2 * i] = (220, 40, 40)
        frames[i, 28:44, 44 - i:60 - i] = (40, 200, 60)
    return frames


def lossless_video(frames: np.ndarray, fps: int = 12) -> bytes:
    """A QuickTime video of PNG frames: decoding gives back exactly these pixels."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mov") as container:
        stream = container.add_stream("png", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def queue_outcome(http, submitted: dict, timeout_s: float = 240):
    """Poll a queued request's status (with logs) until COMPLETED; return (that status, its result response)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = http.get(submitted["status_url"], params={"logs": 1}).json()
        if status["status"] == "COMPLETED":
            return status, http.get(submitted["response_url"])
        time.sleep(0.05)
    raise AssertionError("the request did not complete")
