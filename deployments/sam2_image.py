"""`fal-ai/sam2/image`: SAM 2.1 point/box prompted image segmentation (the `sam2` image predictor)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from deployments.base import ModelDeployment, RequestError, RunContext
from deployments.model_settings import resolve_device, sam2_build_kwargs
from models.image_io import encode_image
from models.mask_render import render_mask
from models.sam2_image import Sam2ImageSegmenter
from serve.fal_types import BoxPrompt, Image, PointPrompt
from serve.output_files import save_output


class Sam2ImageInput(BaseModel):
    image_url: str = Field(..., description="URL, data URI or /files/ URL of the image to segment.",
                           examples=["https://storage.googleapis.com/falserverless/example_inputs/sam2/cat.jpg"])
    prompts: list[PointPrompt] = Field(default_factory=list, description="Point prompts.")
    box_prompts: list[BoxPrompt] = Field(default_factory=list, description="Box prompts.")
    apply_mask: bool = Field(False, description="Overlay the mask on the image instead of returning the bare mask.")
    sync_mode: bool = Field(False, description="Return the image as a data URI; it is not stored.")
    output_format: Literal["jpeg", "png", "webp"] = Field("png", description="Output image format.")


class Sam2ImageOutput(BaseModel):
    image: Image = Field(..., description="The segmentation mask, or the image with the mask applied.")


class Sam2Image(ModelDeployment):
    input_model = Sam2ImageInput

    def setup(self, model: dict) -> None:
        self.segmenter = Sam2ImageSegmenter.from_checkpoint(model["checkpoint"], device=resolve_device(model.get("device")),
                                                            **sam2_build_kwargs(model))

    async def decode(self, request: Sam2ImageInput, ctx: RunContext) -> dict:
        if not request.prompts and not request.box_prompts:
            raise RequestError(["prompts"], "give at least one point prompt (prompts) or box prompt (box_prompts)")
        data, _ = await self.read_input_file("image_url", request.image_url, ctx)
        image = self.decode_image_field("image_url", data)
        ctx.scratch["image"] = image
        height, width = image.shape[:2]
        for i, p in enumerate(request.prompts):
            if not (0 <= p.x < width and 0 <= p.y < height):
                raise RequestError(["prompts", i], f"point ({p.x}, {p.y}) lies outside the {width}x{height} image")
        for i, b in enumerate(request.box_prompts):
            if b.x_max <= 0 or b.y_max <= 0 or b.x_min >= width or b.y_min >= height:
                raise RequestError(["box_prompts", i], f"box lies outside the {width}x{height} image")
        return {
            "image": image,
            "points": [(p.x, p.y) for p in request.prompts],
            "labels": [int(p.label) for p in request.prompts],
            "boxes": [(b.x_min, b.y_min, b.x_max, b.y_max) for b in request.box_prompts],
        }

    def predict(self, inputs: dict, ctx: RunContext) -> np.ndarray:
        mask = self.segmenter.segment(inputs["image"], inputs["points"], inputs["labels"], inputs["boxes"])
        ctx.log(f"segmented {mask.shape[1]}x{mask.shape[0]} image: {int(mask.sum())} mask pixels")
        return mask

    async def encode(self, mask: np.ndarray, request: Sam2ImageInput, ctx: RunContext) -> dict:
        # decode() already produced the image; re-decoding here would double the work, so keep it on ctx.
        picture = render_mask(mask, ctx.scratch.get("image"), apply_mask=request.apply_mask)
        data, content_type = encode_image(picture, request.output_format)
        ext = "jpg" if request.output_format == "jpeg" else request.output_format
        file = await save_output(self.platform.storage, data, content_type, f"mask.{ext}", ctx.job.base_url,
                                 request.sync_mode)
        return {"image": {**file, "width": picture.width, "height": picture.height}}
