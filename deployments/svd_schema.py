"""`fal-ai/svd`: image to video with Stable Video Diffusion, fal's fields plus the frame count."""

from __future__ import annotations

from pydantic import BaseModel, Field

from serve.fal_types import File

MAX_SEED = 2**63 - 1


class SvdInput(BaseModel):
    image_url: str = Field(..., description="The conditioning image (the first frame).")
    mask_image_url: str | None = Field(None, description=(
        "Motion brush: black moves, white stays still. Resized to the output size if it differs."))
    control_maps_data_url: str | None = Field(None, description=(
        "A zip or tar of per-frame depth maps (.jpg/.jpeg/.png/.bmp/.gif/.tiff), sorted by file name; "
        "the video gets one frame per map. Needs a depth ControlNet on the server."))
    motion_bucket_id: int = Field(127, ge=1, le=255, description="More motion with higher values.")
    cond_aug: float = Field(0.02, ge=0.0, le=1.0, description="Noise added to the conditioning image.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random when absent; the one used is returned.")
    steps: int = Field(20, ge=1, le=100, description="Denoising steps.")
    fps: int | None = Field(None, ge=1, le=60, description=(
        "Frames per second of the output, also a conditioning input; default: the server's (7 for SVD)."))
    num_frames: int | None = Field(None, ge=1, description=(
        "Frames to generate; default: the checkpoint's (14 for SVD, 25 for SVD-XT). Set by the control maps "
        "when given."))


class SvdOutput(BaseModel):
    video: File = Field(..., description="The generated video (H.264 mp4).")
    seed: int = Field(..., description="The seed used.")
