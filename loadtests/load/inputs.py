"""The request inputs: a small generated picture and video, sent inline as data URIs.

Built once per Locust process with numpy, PIL and PyAV (nothing of Visus, nothing that imports
ray): a 256x192 PNG (a red square on a gradient, about 80 KB; the README's test picture) and a 16
frame 128x96 H.264 mp4 of that square moving right (one SAM 2 video range, a few KB).
"""

from __future__ import annotations

import base64
import io
import json

import av
import numpy as np
from PIL import Image

WIDTH, HEIGHT = 256, 192
VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FRAMES, VIDEO_FPS = 128, 96, 16, 8


def picture_png(width: int = WIDTH, height: int = HEIGHT) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 128 / (width + height)], axis=-1)
    pixels[height // 4: 3 * height // 4, width // 4: 5 * width // 8] = (220, 40, 40)
    pixels += np.random.default_rng(0).integers(-6, 7, pixels.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def square_video_mp4(width: int = VIDEO_WIDTH, height: int = VIDEO_HEIGHT, frames: int = VIDEO_FRAMES,
                     fps: int = VIDEO_FPS) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        side = height // 2
        for i in range(frames):
            frame = np.full((height, width, 3), (30, 90, 40), np.uint8)
            x = 4 + i * (width - side - 8) // max(1, frames - 1)
            frame[height // 4: height // 4 + side, x: x + side] = (220, 40, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def encode(body: dict) -> bytes:
    """JSON encoded once: the load generator shares the machine with the server, it should cost little."""
    return json.dumps(body).encode()


PNG = picture_png()
MP4 = square_video_mp4()
IMAGE_URI = data_uri(PNG, "image/png")
VIDEO_URI = data_uri(MP4, "video/mp4")
# A point and a box on the red square (picture and first video frame).
POINT = {"x": WIDTH * 7 // 16, "y": HEIGHT // 2, "label": 1}
VIDEO_POINT = {"x": 4 + VIDEO_HEIGHT // 4, "y": VIDEO_HEIGHT // 2, "label": 1}

SAM2_IMAGE = encode({"image_url": IMAGE_URI, "prompts": [POINT]})
EVF_SAM = encode({"image_url": IMAGE_URI, "prompt": "the red square"})
SAM2_VIDEO = encode({"video_url": VIDEO_URI, "prompts": [VIDEO_POINT], "apply_mask": True})
# Tiny SVD: 8 frames of 4 steps (the output size comes from the server's config).
SVD = encode({"image_url": IMAGE_URI, "seed": 42, "steps": 4, "num_frames": 8})
SEGMIND_POINTS = encode({"image": base64.b64encode(PNG).decode(), "coordinates": f"[{POINT['x']},{POINT['y']}]",
                         "overlay_mask": False})
SEGMIND_TEXT = encode({"image": base64.b64encode(PNG).decode(), "prompt": "red square"})
SA2VA_IMAGE = encode({"prompt": "Please segment the red square.", "image_url": IMAGE_URI})
SA2VA_VIDEO = encode({"prompt": "Please segment the moving red square.", "video_url": VIDEO_URI,
                      "num_frames_to_sample": 4})
