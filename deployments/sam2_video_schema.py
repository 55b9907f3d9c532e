"""`fal-ai/sam2/video` request and response schemas, and their translation into model prompts.

The schema is fal's (protocol reference §9.2) plus two Visus extensions: prompts on any frame
(propagated forward and backward) and `return_masks_rle` (per-object masks per frame as COCO RLE).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from pydantic import BaseModel, Field

from deployments.base import RequestError
from models.sam2_video import ObjectPrompt
from serve.fal_types import BoxPrompt, File, PointPrompt


class Sam2VideoInput(BaseModel):
    video_url: str = Field(..., description="URL, data URI or /files/ URL of the video to segment.",
                           examples=["https://storage.googleapis.com/falserverless/example_inputs/sam2/video.mp4"])
    prompts: list[PointPrompt] = Field(default_factory=list, description=(
        "Point prompts; `frame_index` (default 0) places one on any frame, `object_id` (default 0) groups "
        "prompts of one object."))
    box_prompts: list[BoxPrompt] = Field(default_factory=list, description="Box prompts (one per object and frame).")
    apply_mask: bool = Field(False, description="Overlay the masks on the video instead of returning a mask video.")
    mask_url: str | None = Field(None, description="An initial mask (image, white = object) for object 0 on frame 0.")
    boundingbox_zip: bool = Field(False, description="Also return per-frame bounding-box overlays as a zip of JPEGs.")
    return_masks_rle: bool = Field(False, description=(
        "Visus extension: also return every object's mask on every frame as COCO RLE JSON."))


class Sam2VideoOutput(BaseModel):
    video: File = Field(..., description="The mask video, or the video with the masks overlaid (H.264 mp4).")
    boundingbox_frames_zip: File | None = Field(None, description="Per-frame bounding-box overlays (zip of JPEGs).")
    masks_rle: File | None = Field(None, description="Per-frame, per-object masks as COCO RLE (JSON).")


def object_prompts(request: Sam2VideoInput, num_frames: int, height: int, width: int,
                   initial_mask: np.ndarray | None) -> list[ObjectPrompt]:
    """One ObjectPrompt per (object, frame); every mistake names its field."""
    points: dict[tuple[int, int], list] = defaultdict(list)
    boxes: dict[tuple[int, int], tuple] = {}

    def frame_of(field: str, i: int, frame_index: int | None) -> int:
        frame = frame_index or 0
        if frame >= num_frames:
            raise RequestError([field, i, "frame_index"], f"frame {frame} is past the end of the video "
                                                          f"({num_frames} frames)")
        return frame

    for i, p in enumerate(request.prompts):
        if not (0 <= p.x < width and 0 <= p.y < height):
            raise RequestError(["prompts", i], f"point ({p.x}, {p.y}) lies outside the {width}x{height} video")
        points[(p.object_id or 0, frame_of("prompts", i, p.frame_index))].append(((p.x, p.y), int(p.label)))
    for i, b in enumerate(request.box_prompts):
        if b.x_max <= 0 or b.y_max <= 0 or b.x_min >= width or b.y_min >= height:
            raise RequestError(["box_prompts", i], f"box lies outside the {width}x{height} video")
        key = (b.object_id or 0, frame_of("box_prompts", i, b.frame_index))
        if key in boxes:
            raise RequestError(["box_prompts", i, "object_id"],
                               f"object {key[0]} already has a box on frame {key[1]}; give each box its own object_id")
        boxes[key] = (b.x_min, b.y_min, b.x_max, b.y_max)
    prompts = []
    for key in sorted(set(points) | set(boxes)):
        obj_id, frame = key
        pts = points.get(key, [])
        prompts.append(ObjectPrompt(obj_id=obj_id, frame_idx=frame, points=[p for p, _ in pts],
                                    labels=[label for _, label in pts], box=boxes.get(key)))
    if initial_mask is not None:
        if (0, 0) in points or (0, 0) in boxes:
            raise RequestError(["mask_url"], "mask_url sets object 0 on frame 0, which also has point or box prompts; "
                                             "give those prompts another object_id")
        prompts.append(ObjectPrompt(obj_id=0, frame_idx=0, mask=initial_mask))
    if not prompts:
        raise RequestError(["prompts"], "give at least one point prompt (prompts), box prompt (box_prompts) or mask_url")
    return prompts
