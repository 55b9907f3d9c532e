"""Segmind `sam-v2-image` (`POST /v1/sam-v2-image`): its parameters as Segmind documents them.

Coordinates come as JSON-encoded strings, `"[834,74]"` for one point or `"[[839,74],[844,20]]"`
for several; they are parsed here, so a malformed one is a 422 naming the field.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field, field_validator, model_validator

Point = tuple[int, int]


def parse_coordinates(value: str | list | None, field_name: str) -> list[Point]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    data = value
    if isinstance(value, str):
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f'{field_name} must be "[x,y]" or "[[x,y],...]", got {value!r}') from None
    if isinstance(data, list) and len(data) == 2 and all(isinstance(v, (int, float)) for v in data):
        data = [data]
    if not isinstance(data, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in p) for p in data):
        raise ValueError(f'{field_name} must be "[x,y]" or "[[x,y],...]" with numbers, got {value!r}')
    return [(int(round(x)), int(round(y))) for x, y in data]


class SegmindSam2ImageInput(BaseModel):
    image: str = Field(..., description="Input image: a public URL or the raw base64 of the file.",
                       examples=["https://example.com/boy.jpg"])
    prompt: str | None = Field(None, description="Text selecting the object(s); when given, coordinates are "
                                                 "ignored.", examples=["boy"])
    coordinates: str | None = Field(None, description='Points on the object, "[x,y]" or "[[x,y],[x,y]]".',
                                    examples=["[834,74]"])
    remove_coordinates: str | None = Field(None, description="Points off the object, same format.",
                                           examples=["[[839,74],[844,20]]"])
    overlay_mask: bool = Field(True, description="The mask over the image; false: the mask itself.")
    base64: bool = Field(False, description='Answer {"image": "<base64 JPEG>"} instead of the JPEG bytes.')

    @field_validator("coordinates", "remove_coordinates")
    @classmethod
    def _well_formed(cls, value: str | None, info) -> str | None:
        parse_coordinates(value, info.field_name)
        return value

    @model_validator(mode="after")
    def _something_to_segment(self) -> "SegmindSam2ImageInput":
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt is empty: give a text prompt or coordinates")
        if not self.prompt and not parse_coordinates(self.coordinates, "coordinates"):
            raise ValueError("give a prompt, or coordinates of at least one point on the object")
        return self

    def points(self) -> tuple[list[Point], list[int]]:
        positive = parse_coordinates(self.coordinates, "coordinates")
        negative = parse_coordinates(self.remove_coordinates, "remove_coordinates")
        return positive + negative, [1] * len(positive) + [0] * len(negative)


class SegmindImageOutput(BaseModel):
    """The `base64: true` answer; otherwise the body is the JPEG itself (`image/jpeg`)."""

    image: str = Field(..., description="The output JPEG, base64-encoded.")
