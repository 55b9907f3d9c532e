"""Sa2VA's inputs: InternVL dynamic tiling, the prompt text with its image blocks, SAM 2 pixels.

Every step follows the reference implementation (models.md 3.4, 3.6, 3.9; the parity packs'
README): tiles and frames are PIL bicubic resizes normalised with ImageNet statistics; SAM 2 gets
1024x1024 bicubic resizes (``models.sam2_video.frames_to_model_input``) normalised with the
bf16-rounded statistics the reference uses.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from models.sa2va_config import MAX_KEY_FRAMES, MAX_TILES, MIN_TILES, TILE_SIZE, TOKENS_PER_TILE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The reference normalises SAM 2's input with bf16 tensors of the ImageNet statistics.
SAM_MEAN_BF16 = (0.484375, 0.455078125, 0.40625)
SAM_STD_BF16 = (0.228515625, 0.2236328125, 0.224609375)
SAM_NORMALISATION = (SAM_MEAN_BF16, SAM_STD_BF16)  # for models.sam2_video.encode_frames

IMAGE_TOKEN = "<image>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
VP_START, VP_END = "<vp>", "</vp>"
SEG_TOKEN = "[SEG]"
TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
STOP_WORDS = {"qwen2": ("<|im_end|>", "<|endoftext|>"), "internlm2": ("<|im_end|>",)}


def tile_grid(width: int, height: int, min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES,
              tile: int = TILE_SIZE) -> tuple[int, int]:
    """(columns, rows) of the tiling InternVL's ``dynamic_preprocess`` picks for a WxH image."""
    ratios = sorted({(i, j) for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1)
                     for j in range(1, n + 1) if min_tiles <= i * j <= max_tiles}, key=lambda r: r[0] * r[1])
    aspect = width / height
    best, best_diff, area = (1, 1), float("inf"), width * height
    for i, j in ratios:
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and area > 0.5 * tile * tile * i * j:
            best = (i, j)
    return best


def image_tiles(image: np.ndarray) -> list[np.ndarray]:
    """The uint8 448x448 tiles of an image, row-major, plus a thumbnail when there is more than one."""
    pil = Image.fromarray(image)
    cols, rows = tile_grid(pil.width, pil.height)
    resized = pil.resize((TILE_SIZE * cols, TILE_SIZE * rows))
    tiles = [np.asarray(resized.crop((c * TILE_SIZE, r * TILE_SIZE, (c + 1) * TILE_SIZE, (r + 1) * TILE_SIZE)))
             for r in range(rows) for c in range(cols)]
    if len(tiles) > 1:
        tiles.append(np.asarray(pil.resize((TILE_SIZE, TILE_SIZE))))
    return tiles


def frame_tiles(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Video key frames: the first :data:`MAX_KEY_FRAMES`, one 448x448 resize each, no tiling."""
    return [np.asarray(Image.fromarray(f).resize((TILE_SIZE, TILE_SIZE))) for f in frames[:MAX_KEY_FRAMES]]


def tiles_to_pixels(tiles: Sequence[np.ndarray]) -> torch.Tensor:
    """``(N, 3, 448, 448)`` float32: ToTensor then ImageNet normalisation."""
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def sample_frame_indices(num_frames: int, wanted: int | None) -> list[int]:
    """``wanted`` frame indices spread evenly over ``num_frames`` (first and last included); all when unset."""
    if num_frames < 1:
        raise ValueError("the video has no frames")
    if wanted is None or wanted >= num_frames:
        return list(range(num_frames))
    if wanted < 1:
        raise ValueError(f"at least one frame must be sampled, got {wanted}")
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, wanted)})


def region_token_masks(masks: np.ndarray) -> np.ndarray:
    """``(n, H, W)`` bool region masks -> ``(n, 16, 16)`` bool: nearest resize to the token grid."""
    side = int(round(TOKENS_PER_TILE ** 0.5))
    t = torch.from_numpy(np.asarray(masks, dtype=np.uint8)).float()[:, None]
    return (torch.nn.functional.interpolate(t, size=(side, side), mode="nearest")[:, 0] > 0.5).numpy()


def prompt_text(user_text: str, n_tiles_per_image: Sequence[int], region_tokens: Sequence[int] = (),
                past_text: str = "") -> str:
    """The chat-template text: image blocks replace ``<image>``, then visual-prompt regions, if any."""
    text = user_text
    if n_tiles_per_image:
        # Each block ends in a newline; the joined blocks are stripped, so the last one loses it.
        blocks = "".join(f"{IMG_START}{IMG_CONTEXT * (TOKENS_PER_TILE * n)}{IMG_END}\n" for n in n_tiles_per_image)
        blocks = blocks.strip()
        if region_tokens:
            regions = ", ".join(f"region{k + 1}{VP_START}{IMG_CONTEXT * n}{VP_END}" for k, n in enumerate(region_tokens))
            blocks += f"\nThere are {len(region_tokens)} part regions in the picture: {regions}.\n"
        if IMAGE_TOKEN not in text:
            text = IMAGE_TOKEN + text  # fal's prompts carry no <image>: the media goes first
        text = text.replace(IMAGE_TOKEN, blocks)
    return past_text + TEMPLATE.format(input=text)
