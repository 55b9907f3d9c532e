"""`fal-ai/evf-sam`: text-prompted segmentation, with fal's input and output fields."""

from __future__ import annotations

from pydantic import BaseModel, Field

from serve.fal_types import Image

# Kept here rather than imported from models/, so the gateway builds its schema without the models.
EXPAND_MAX = 100
BLUR_MAX = 50


class EvfSamInput(BaseModel):
    prompt: str = Field(..., min_length=1, description="What to segment.", examples=["the red ball on the left"])
    image_url: str = Field(..., description="URL (or data URI) of the image.")
    negative_prompt: str | None = Field(None, description="What to leave out: its mask is subtracted.")
    semantic_type: bool = Field(False, description=(
        "Semantic-level segmentation (body parts, background, all instances at once); needs a multitask checkpoint."))
    mask_only: bool = Field(True, description="Return the mask; false: the image, transparent outside the mask.")
    use_grounding_dino: bool = Field(False, description=(
        "Find the object with Grounding DINO boxes and SAM 2 instead of EVF-SAM2."))
    revert_mask: bool = Field(False, description="Invert the mask.")
    blur_mask: int = Field(0, ge=0, le=BLUR_MAX, description=(
        "Gaussian blur kernel size, 0-50 (0: none). Even sizes are rounded up to the next odd one."))
    expand_mask: int = Field(0, ge=0, le=EXPAND_MAX, description="Grow the mask by this many pixels (0-100).")
    fill_holes: bool = Field(False, description="Fill holes inside the mask.")


class EvfSamOutput(BaseModel):
    image: Image = Field(..., description="The mask (PNG, grey) or the masked image (PNG with alpha).")
