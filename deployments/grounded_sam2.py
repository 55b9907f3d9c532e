"""Grounding DINO + SAM 2 image ("grounded SAM 2"): Segmind's `sam-v2-image`, and phrase masks for others.

One deployment holds both models: Grounding DINO turns a phrase into boxes, SAM 2 turns the boxes
(or clicked points) into one mask. It serves `POST /v1/sam-v2-image` through the usual lifecycle,
and `fal-ai/evf-sam` calls `segment_phrase` on it for `use_grounding_dino`, so both share one
Grounding DINO deployment.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re

import numpy as np

from deployments.base import ModelDeployment, RequestError, RunContext
from deployments.model_settings import resolve_device, sam2_build_kwargs
from deployments.segmind_sam2_schema import SegmindSam2ImageInput
from models.grounding_dino import GroundingDino
from models.image_io import encode_image
from models.mask_render import render_mask
from models.sam2_image import Sam2ImageSegmenter

_URL = re.compile(r"^(https?://|data:)", re.IGNORECASE)


class GroundedSam2(ModelDeployment):
    input_model = SegmindSam2ImageInput

    def setup(self, model: dict) -> None:
        device = resolve_device(model.get("device"))
        self.detector = GroundingDino.from_pretrained(model["grounding_dino"], device=device)
        self.segmenter = Sam2ImageSegmenter.from_checkpoint(model["checkpoint"], device=device,
                                                            **sam2_build_kwargs(model))
        self.box_threshold = float(model.get("box_threshold", 0.35))
        self.text_threshold = float(model.get("text_threshold", 0.25))
        self.max_boxes = int(model.get("max_boxes", 10))

    # ---- the model calls, shared with other deployments -----------------------------------
    def _phrase_mask(self, image: np.ndarray, phrase: str) -> tuple[np.ndarray, int]:
        detections = self.detector.detect(image, phrase, box_threshold=self.box_threshold,
                                          text_threshold=self.text_threshold, max_boxes=self.max_boxes)
        if not detections:
            return np.zeros(image.shape[:2], dtype=bool), 0
        return self.segmenter.segment(image, boxes=[d.box for d in detections]), len(detections)

    async def segment_phrase(self, image: np.ndarray, phrase: str) -> np.ndarray:
        """(H, W) bool: the union of SAM 2's masks in every box Grounding DINO finds for `phrase`."""
        def run() -> np.ndarray:
            with self._model_lock:
                return self._phrase_mask(image, phrase)[0]

        return await asyncio.to_thread(run)

    # ---- Segmind sam-v2-image ------------------------------------------------------------
    async def decode(self, request: SegmindSam2ImageInput, ctx: RunContext) -> dict:
        if _URL.match(request.image.strip()):
            data, _ = await self.read_input_file("image", request.image.strip(), ctx)
        else:
            try:
                data = base64.b64decode(request.image, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(["image"], "image must be an http(s) URL or the base64 of an image file") from None
        image = self.decode_image_field("image", data)
        points, labels = ([], []) if request.prompt else request.points()
        height, width = image.shape[:2]
        for x, y in points:
            if not (0 <= x < width and 0 <= y < height):
                field = "coordinates" if labels[points.index((x, y))] else "remove_coordinates"
                raise RequestError([field], f"point [{x},{y}] lies outside the {width}x{height} image")
        ctx.scratch["image"] = image
        return {"image": image, "prompt": request.prompt, "points": points, "labels": labels}

    def predict(self, inputs: dict, ctx: RunContext) -> np.ndarray:
        if inputs["prompt"]:
            mask, found = self._phrase_mask(inputs["image"], inputs["prompt"])
            ctx.log(f"{found} box(es) for {inputs['prompt']!r}; {int(mask.sum())} mask pixels")
            return mask
        mask = self.segmenter.segment(inputs["image"], inputs["points"], inputs["labels"])
        ctx.log(f"{len(inputs['points'])} point(s); {int(mask.sum())} mask pixels")
        return mask

    async def encode(self, mask: np.ndarray, request: SegmindSam2ImageInput, ctx: RunContext) -> dict:
        picture = render_mask(mask, ctx.scratch["image"], apply_mask=request.overlay_mask)
        data, content_type = encode_image(picture, "jpeg")
        return {"image": base64.b64encode(data).decode(), "content_type": content_type}
