"""`fal-ai/sa2va/{8b,4b}/image`: Sa2VA's answer about an image, with one PNG mask per [SEG]."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from deployments.base import RunContext
from deployments.sa2va_answer import Sa2vaAnswerer, clean_answer
from deployments.sa2va_schema import Sa2vaImageInput
from models.image_io import encode_image
from models.sa2va import Prompt
from serve.output_files import save_output


@dataclass
class ImageJob:
    image: np.ndarray
    prompt: Prompt


class Sa2vaImage(Sa2vaAnswerer):
    input_model = Sa2vaImageInput

    async def decode(self, request: Sa2vaImageInput, ctx: RunContext) -> ImageJob:
        data, _ = await self.read_input_file("image_url", request.image_url, ctx)
        image = self.decode_image_field("image_url", data)
        prompt = await asyncio.to_thread(self.prepare_prompt, request.prompt, image)
        ctx.log(f"image {image.shape[1]}x{image.shape[0]}: {prompt.pixel_values.shape[0]} tile(s), "
                f"{len(prompt.input_ids)} prompt tokens")
        return ImageJob(image, prompt)

    def predict(self, job: ImageJob, ctx: RunContext) -> tuple[str, list[np.ndarray]]:
        generation = self.answer(job.prompt, ctx)
        text = clean_answer(generation.text, self.sa2va.stop_words)
        if generation.seg_hidden.shape[0] == 0:
            return text, []
        ctx.cancel.check()
        logits = self.sa2va.segment(self.sa2va.seg_embeddings(generation), [job.image], num_key_frames=1)
        return text, [(x[0] > 0).numpy() for x in logits]

    async def encode(self, outputs: tuple[str, list[np.ndarray]], request: Sa2vaImageInput, ctx: RunContext) -> dict:
        text, masks = outputs
        files = []
        for i, mask in enumerate(masks):
            data, content_type = await asyncio.to_thread(encode_image, mask.astype(np.uint8) * 255, "png")
            file = await save_output(self.platform.storage, data, content_type, f"mask_{i}.png", ctx.job.base_url)
            files.append({**file, "width": int(mask.shape[1]), "height": int(mask.shape[0])})
        return {"output": text, "masks": files}
