"""SAM 2 video masks as outputs: COCO RLE storage, JSON, rendered frames and box-overlay JPEG zips.

Masks for a whole video do not fit in memory as arrays, so :class:`FrameMasks` keeps them as
COCO run-length encodings (a few hundred bytes per object and frame) and decodes on demand.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

# Tableau 10: distinct from each other and readable both over video and on black.
OBJECT_COLORS: list[tuple[int, int, int]] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]

BOX_WIDTH = 2
JPEG_QUALITY = 90


def color_for(obj_id: int) -> tuple[int, int, int]:
    """The palette colour of object ``obj_id``; the palette repeats every ``len(OBJECT_COLORS)``."""
    return OBJECT_COLORS[int(obj_id) % len(OBJECT_COLORS)]


def _as_2d_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def encode_rle(mask: np.ndarray) -> dict:
    """``(H, W)`` bool mask -> COCO RLE ``{"size": [H, W], "counts": str}``, ready for JSON."""
    mask = _as_2d_bool(mask)
    # pycocotools reads the buffer column-major and insists on uint8.
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    height, width = (int(v) for v in rle["size"])
    return {"size": [height, width], "counts": rle["counts"].decode("utf-8")}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (``counts`` as ``str`` or ``bytes``) -> ``(H, W)`` bool mask."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("utf-8")
    height, width = (int(v) for v in rle["size"])
    return mask_utils.decode({"size": [height, width], "counts": counts}).astype(bool)


def mask_box(mask: np.ndarray) -> list[int] | None:
    """Tight ``[x_min, y_min, x_max, y_max]`` (max inclusive) around ``mask``, ``None`` if empty."""
    mask = _as_2d_bool(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


class FrameMasks:
    """Per-frame object masks of one video, stored as RLE: frame index -> {object id: rle}.

    Boxes are computed once, when a mask is added, so JSON export needs no decoding.
    """

    def __init__(self, height: int, width: int):
        if height <= 0 or width <= 0:
            raise ValueError(f"bad mask size {width}x{height}")
        self.height, self.width = int(height), int(width)
        self._frames: dict[int, dict[int, tuple[dict, list[int] | None]]] = {}

    def add(self, frame_idx: int, obj_ids: Sequence[int], masks: np.ndarray) -> None:
        """Store ``masks`` (``(num_obj, H, W)`` bool) for ``frame_idx``; an object already
        stored for that frame is replaced, others are kept."""
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[1:] != (self.height, self.width):
            raise ValueError(
                f"masks must be (num_obj, {self.height}, {self.width}), got shape {masks.shape}"
            )
        if len(obj_ids) != masks.shape[0]:
            raise ValueError(f"{len(obj_ids)} object ids for {masks.shape[0]} masks")
        objects = self._frames.setdefault(int(frame_idx), {})
        for obj_id, mask in zip(obj_ids, masks):
            mask = mask.astype(bool, copy=False)
            objects[int(obj_id)] = (encode_rle(mask), mask_box(mask))

    def get(self, frame_idx: int) -> dict[int, np.ndarray]:
        """Object id -> ``(H, W)`` bool mask for ``frame_idx``; ``{}`` if the frame has none."""
        return {obj_id: decode_rle(rle) for obj_id, rle in self.rles(frame_idx).items()}

    def boxes(self, frame_idx: int) -> dict[int, list[int] | None]:
        """Object id -> tight box (as :func:`mask_box`) for ``frame_idx``, without decoding."""
        objects = self._frames.get(int(frame_idx), {})
        return {obj_id: None if objects[obj_id][1] is None else list(objects[obj_id][1]) for obj_id in sorted(objects)}

    def rles(self, frame_idx: int) -> dict[int, dict]:
        """Object id -> RLE for ``frame_idx``, in ascending id order; ``{}`` if none."""
        objects = self._frames.get(int(frame_idx), {})
        return {obj_id: dict(objects[obj_id][0]) for obj_id in sorted(objects)}

    def __contains__(self, frame_idx) -> bool:
        try:
            return int(frame_idx) in self._frames
        except (TypeError, ValueError):
            return False

    def __len__(self) -> int:
        return len(self._frames)

    def only(self, obj_id: int, new_id: int = 0) -> "FrameMasks":
        """The masks of one object, under ``new_id``, on every frame that has it."""
        out = FrameMasks(self.height, self.width)
        for frame_idx, objects in self._frames.items():
            if obj_id in objects:
                out._frames[frame_idx] = {int(new_id): objects[obj_id]}  # RLE and box as they are
        return out

    def to_json(self, frames: Iterable[int] | None = None) -> dict:
        """A JSON-ready dict, frames and objects in ascending order; ``frames`` picks a subset."""
        wanted = sorted(self._frames) if frames is None else sorted(int(f) for f in frames if f in self)
        out = []
        for frame_idx in wanted:
            boxes = self.boxes(frame_idx)
            out.append({
                "frame_index": frame_idx,
                "objects": [{"object_id": obj_id, "box": boxes[obj_id], "rle": rle}
                            for obj_id, rle in self.rles(frame_idx).items()],
            })
        return {"height": self.height, "width": self.width, "frames": out}

    @classmethod
    def from_json(cls, data: dict) -> "FrameMasks":
        """Inverse of :meth:`to_json`; the RLEs are taken as they are, not re-encoded."""
        out = cls(data["height"], data["width"])
        out.add_json(data)
        return out

    def add_json(self, data: dict) -> None:
        """Merge frames exported by :meth:`to_json` of a store of the same size."""
        if [int(data["height"]), int(data["width"])] != [self.height, self.width]:
            raise ValueError(f"masks of {data['width']}x{data['height']} do not match {self.width}x{self.height}")
        for frame in data["frames"]:
            objects = self._frames.setdefault(int(frame["frame_index"]), {})
            for obj in frame["objects"]:
                rle = obj["rle"]
                counts = rle["counts"]
                if isinstance(counts, bytes):
                    counts = counts.decode("utf-8")
                size = [int(v) for v in rle["size"]]
                if size != [self.height, self.width]:
                    raise ValueError(f"RLE size {size} does not match {self.height}x{self.width}")
                box = obj.get("box")
                objects[int(obj["object_id"])] = (
                    {"size": size, "counts": counts},
                    None if box is None else [int(v) for v in box],
                )


def render_frame(
    frame: np.ndarray | None,
    masks: dict[int, np.ndarray],
    height: int,
    width: int,
    apply_mask: bool,
    alpha: float = 0.6,
) -> np.ndarray:
    """One ``(height, width, 3)`` uint8 RGB output frame.

    * ``apply_mask=True``: ``frame`` with each object's colour blended at ``alpha`` over its
      pixels, in ascending id order, so where objects overlap the later one is on top.
    * ``apply_mask=False``: the mask video frame (``frame`` is ignored): black background and
      each object in its colour, or in white when ``masks`` holds at most one object, because a
      single-object mask video is most useful as a plain matte.
    """
    ordered = [(obj_id, _as_2d_bool(masks[obj_id])) for obj_id in sorted(masks)]
    for obj_id, mask in ordered:
        if mask.shape != (height, width):
            raise ValueError(
                f"mask of object {obj_id} is {mask.shape}, expected ({height}, {width})"
            )

    if not apply_mask:
        out = np.zeros((height, width, 3), dtype=np.uint8)
        for obj_id, mask in ordered:
            out[mask] = (255, 255, 255) if len(ordered) <= 1 else color_for(obj_id)
        return out

    if frame is None:
        raise ValueError("apply_mask=True needs the video frame")
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
        raise ValueError(
            f"frame must be ({height}, {width}, 3) uint8, got {frame.dtype} {frame.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not ordered:
        return frame.copy()
    # Blend in float and round once, so overlapping objects do not accumulate rounding error.
    out = frame.astype(np.float32)
    for obj_id, mask in ordered:
        tint = np.asarray(color_for(obj_id), dtype=np.float32)
        out[mask] = out[mask] * (1.0 - alpha) + tint * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_boxes(frame: np.ndarray, masks: dict[int, np.ndarray]) -> np.ndarray:
    """A copy of ``frame`` (``(H, W, 3)`` uint8) with each non-empty object's tight box outlined
    in its colour, ``BOX_WIDTH`` px wide, drawn inside the box so it never covers other pixels."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
    image = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(image)
    for obj_id in sorted(masks):
        mask = _as_2d_bool(masks[obj_id])
        if mask.shape != frame.shape[:2]:
            raise ValueError(
                f"mask of object {obj_id} is {mask.shape}, frame is {frame.shape[:2]}"
            )
        box = mask_box(mask)
        if box is not None:
            draw.rectangle(box, outline=color_for(obj_id), width=BOX_WIDTH)
    return np.asarray(image).copy()


def encode_jpeg(image: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 RGB as a JPEG of the box zip's quality."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


class BoxFramesZip:
    """Write frames one at a time as ``frame_NNNNNN.jpg`` (JPEG, quality 90) into a zip archive.

    Entries are stored uncompressed since JPEG data does not shrink further. The zero-padded
    names sort by frame index; the archive keeps the order of :meth:`add` calls.
    """

    def __init__(self, target: str | Path | BinaryIO):
        self._zip: zipfile.ZipFile | None = zipfile.ZipFile(
            str(target) if isinstance(target, Path) else target, "w", zipfile.ZIP_STORED
        )
        self._names: set[str] = set()
        self.frames_written = 0

    @staticmethod
    def name_for(frame_idx: int) -> str:
        return f"frame_{int(frame_idx):06d}.jpg"

    def add(self, frame_idx: int, image: np.ndarray) -> None:
        """Append ``image`` (``(H, W, 3)`` uint8 RGB, usually from :func:`draw_boxes`)."""
        self.add_jpeg(frame_idx, encode_jpeg(image))

    def add_jpeg(self, frame_idx: int, data: bytes) -> None:
        """Append an already encoded frame (rendered elsewhere, e.g. on another replica)."""
        if self._zip is None:
            raise ValueError("the zip is closed")
        if frame_idx < 0:
            raise ValueError(f"bad frame index {frame_idx}")
        name = self.name_for(frame_idx)
        # zipfile only warns about duplicate names, and readers would see just one of them.
        if name in self._names:
            raise ValueError(f"frame {frame_idx} was already added")
        self._zip.writestr(name, data)
        self._names.add(name)
        self.frames_written += 1

    def close(self) -> None:
        """Write the central directory; safe to call twice. A passed file object stays open."""
        if self._zip is None:
            return
        try:
            self._zip.close()
        finally:
            self._zip = None

    def __enter__(self) -> "BoxFramesZip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
