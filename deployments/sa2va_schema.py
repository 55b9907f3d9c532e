"""`fal-ai/sa2va/{8b,4b}/image` and `/video`: fal's input and output fields (protocol reference 9.4, 9.5)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from serve.fal_types import File, Image

# Kept here rather than imported from models/, so the gateway builds its schema without the models.
MAX_PROMPT_CHARS = 20_000
MAX_FRAMES_TO_SAMPLE = 100


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("the prompt must contain text, not only spaces")
    return value


class Sa2vaImageInput(BaseModel):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS,
                        description="The question or instruction; ask for masks with words like 'segment'.",
                        examples=["Please segment the person in the image."])
    image_url: str = Field(..., description="URL (or data URI) of the image.")

    _prompt = field_validator("prompt")(_not_blank)


class Sa2vaImageOutput(BaseModel):
    output: str = Field(..., description="The answer. Each [SEG] in it has one mask in `masks`, in order.")
    masks: list[Image] = Field(default_factory=list, description="One PNG mask (white = object) per [SEG].")


class Sa2vaVideoInput(BaseModel):
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS,
                        description="The question or instruction about the video.",
                        examples=["Please segment the moving car."])
    video_url: str = Field(..., description="URL (or data URI) of the video.")
    num_frames_to_sample: int | None = Field(None, ge=1, le=MAX_FRAMES_TO_SAMPLE, description=(
        "Frames to sample evenly from the video (1-100); all frames when unset. The first 5 sampled frames "
        "go to the language model; SAM 2 tracks the masks through every sampled frame."))

    _prompt = field_validator("prompt")(_not_blank)


class Sa2vaVideoOutput(BaseModel):
    output: str = Field(..., description="The answer. Each [SEG] in it has one mask video in `masks`, in order.")
    masks: list[File] = Field(default_factory=list, description=(
        "One mp4 mask video (white = object) per [SEG], one frame per sampled frame, spanning the video's duration."))
