"""Schema types shared by fal endpoints (protocol reference §9): File, Image, point and box prompts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, model_validator


def _label(value):
    # The TS types say "0"|"1", the docs example sends 1: accept both spellings.
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value)
    return value


class File(BaseModel):
    url: str = Field(..., description="URL (or data URI in sync mode) of the file.")
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None


class Image(File):
    width: int | None = None
    height: int | None = None


class PointPrompt(BaseModel):
    x: int = Field(..., description="X coordinate in pixels.", examples=[500])
    y: int = Field(..., description="Y coordinate in pixels.", examples=[375])
    label: Annotated[Literal[0, 1], BeforeValidator(_label)] = Field(
        1, description="1 = foreground, 0 = background (int or string).")
    frame_index: int | None = Field(None, ge=0, description="Frame the prompt applies to (video).")
    object_id: int | None = Field(None, ge=0, description="Prompts sharing an id refine the same object.")


class BoxPrompt(BaseModel):
    x_min: int = Field(..., examples=[425])
    y_min: int = Field(..., examples=[600])
    x_max: int = Field(..., examples=[700])
    y_max: int = Field(..., examples=[875])
    frame_index: int | None = Field(None, ge=0)
    object_id: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "BoxPrompt":
        if self.x_max <= self.x_min or self.y_max <= self.y_min:
            raise ValueError("box needs x_min < x_max and y_min < y_max")
        return self
