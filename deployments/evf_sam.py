"""`fal-ai/evf-sam`: EVF-SAM2 (BEiT-3 + SAM 2) text-prompted masks, with fal's post-processing.

`use_grounding_dino` sends the prompt (and the negative prompt) to the shared Grounding DINO + SAM 2
deployment instead of EVF-SAM2. The mask options (negative subtraction, hole filling, expansion,
inversion, blur) are `models.mask_postprocess`, applied in its documented order.
"""

from __future__ import annotations

import asyncio

import numpy as np

from deployments.base import ModelDeployment, RequestError, RunContext
from deployments.evf_sam_schema import EvfSamInput
from deployments.model_settings import resolve_device
from models.evf_sam2 import EvfSam2
from models.image_io import encode_image
from models.mask_postprocess import compose, postprocess
from serve.output_files import save_output


class EvfSam(ModelDeployment):
    input_model = EvfSamInput

    def setup(self, model: dict) -> None:
        device = resolve_device(model.get("device"))
        # fp16/bf16 only where they pay off: on a GPU. CPU stays fp32 (the parity-checked path).
        dtype = model.get("dtype", "float32") if device != "cpu" else "float32"
        self.evf = EvfSam2.from_pretrained(model["checkpoint"], device=device, dtype=dtype)
        self.grounding_name = model.get("grounding")
        if self.grounding_name and self.grounding_name not in self.workers:
            raise ValueError(f"grounding worker {self.grounding_name!r} is not configured for this endpoint")

    async def decode(self, request: EvfSamInput, ctx: RunContext) -> dict:
        if request.semantic_type and not request.use_grounding_dino and not self.evf.multitask:
            raise RequestError(["semantic_type"], "this server's EVF-SAM2 checkpoint is not a multitask one, "
                                                  "so it has no semantic mode")
        if request.use_grounding_dino and not self.grounding_name:
            raise RequestError(["use_grounding_dino"], "Grounding DINO is not configured on this server")
        if not request.use_grounding_dino:
            for field in ("prompt", "negative_prompt"):
                text = getattr(request, field)
                if text is not None:
                    try:
                        self.evf.tokenize(self.evf.prompt_text(text, request.semantic_type))
                    except ValueError as exc:
                        raise RequestError([field], str(exc)) from None
        data, _ = await self.read_input_file("image_url", request.image_url, ctx)
        image = self.decode_image_field("image_url", data)
        ctx.scratch["image"] = image
        if request.use_grounding_dino:
            # The Grounding DINO deployment's handle lives on this event loop: call it here, not in predict().
            worker = self.workers[self.grounding_name]
            phrases = [request.prompt] + ([request.negative_prompt] if request.negative_prompt else [])
            masks = await asyncio.gather(*(worker.segment_phrase.remote(image, p) for p in phrases))
            return {"image": image, "request": request, "masks": masks}
        return {"image": image, "request": request}

    def predict(self, inputs: dict, ctx: RunContext) -> np.ndarray:
        request: EvfSamInput = inputs["request"]
        if "masks" in inputs:
            mask, negative = inputs["masks"][0], (inputs["masks"][1] if len(inputs["masks"]) > 1 else None)
            source = "Grounding DINO + SAM 2"
        else:
            mask = self.evf.predict(inputs["image"], request.prompt, semantic=request.semantic_type).mask
            negative = None
            if request.negative_prompt:
                negative = self.evf.predict(inputs["image"], request.negative_prompt,
                                            semantic=request.semantic_type).mask
            source = "EVF-SAM2"
        matte = postprocess(mask, negative_mask=negative, revert_mask=request.revert_mask,
                            fill_holes=request.fill_holes, expand_mask=request.expand_mask,
                            blur_mask=request.blur_mask)
        ctx.log(f"{source}: {int(mask.sum())} mask pixels; {int((matte > 127).sum())} after post-processing")
        return matte

    async def encode(self, matte: np.ndarray, request: EvfSamInput, ctx: RunContext) -> dict:
        picture = compose(ctx.scratch["image"], matte, request.mask_only)
        data, content_type = encode_image(picture, "png")
        file = await save_output(self.platform.storage, data, content_type, "mask.png", ctx.job.base_url)
        return {"image": {**file, "width": picture.width, "height": picture.height}}
