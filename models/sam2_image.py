"""Promptable single-image segmentation with SAM 2.1: points and boxes in, one boolean mask out."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.image_io import check_rgb_image
from models.sam2_build import load_sam2


def make_image_predictor(model: torch.nn.Module):
    """A ``SAM2ImagePredictor`` for ``model`` that works at any ``model.image_size``.

    The predictor hard-codes the backbone feature sizes of a 1024 input; they are derived from
    the model instead (models.md 1.4).
    """
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():
        # SAM2Transforms uses torch.jit.script, deprecated in torch 2.14 but still working.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        predictor = SAM2ImagePredictor(model)
    s = int(model.image_size)
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return predictor


class Sam2ImageSegmenter:
    """Segment one object (or the union of several) in an RGB image from point and box prompts.

    Not thread-safe: the predictor keeps the current image's features between calls.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.image_size: int = int(model.image_size)
        self._predictor = make_image_predictor(model)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, device: str = "cpu", **load_kwargs
    ) -> "Sam2ImageSegmenter":
        """Load ``checkpoint`` with :func:`models.sam2_build.load_sam2` (same keyword arguments)."""
        return cls(load_sam2(checkpoint, device=device, **load_kwargs))

    def segment(
        self,
        image: np.ndarray,
        points: Sequence[tuple[float, float]] = (),
        labels: Sequence[int] = (),
        boxes: Sequence[tuple[float, float, float, float]] = (),
    ) -> np.ndarray:
        """Return an ``(H, W)`` bool mask for ``image`` (``(H, W, 3)`` uint8 RGB).

        Coordinates are pixels of ``image``: points ``(x, y)`` with labels 1 (foreground) or
        0 (background), boxes ``(x_min, y_min, x_max, y_max)``.

        Prompt grouping: all points describe one object. With one box, the points and the box
        describe one object together. With several boxes each box is its own object and the
        points, if any, another one. The result is the union of the objects' masks.
        """
        image = check_rgb_image(image)
        pts, lbl, bxs = _check_prompts(points, labels, boxes)

        with torch.inference_mode():
            self._predictor.set_image(image)
            try:
                if len(bxs) <= 1:
                    masks = [self._predict_object(pts, lbl, bxs[0] if len(bxs) else None)]
                else:
                    masks = [self._predict_boxes(bxs)]
                    if len(pts):
                        masks.append(self._predict_object(pts, lbl, None))
            finally:
                # Drop the features so an idle instance holds neither memory nor user data.
                self._predictor.reset_predictor()
        return np.logical_or.reduce(masks)

    def _predict_object(
        self, pts: np.ndarray, lbl: np.ndarray, box: np.ndarray | None
    ) -> np.ndarray:
        # A lone click is ambiguous (part / object / group): take the best of SAM's three masks.
        multimask = len(pts) == 1 and box is None
        masks, scores, _ = self._predictor.predict(
            point_coords=pts if len(pts) else None,
            point_labels=lbl if len(pts) else None,
            box=box,
            multimask_output=multimask,
        )
        best = int(np.argmax(scores)) if multimask else 0
        return masks[best] > 0.5

    def _predict_boxes(self, bxs: np.ndarray) -> np.ndarray:
        masks, _, _ = self._predictor.predict(box=bxs, multimask_output=False)
        h, w = masks.shape[-2:]
        return masks.reshape(-1, h, w).max(axis=0) > 0.5


def _as_rows(values, width: int, what: str, dtype=np.float32) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.size == 0:
        return np.zeros((0, width) if width else (0,), dtype)
    expected_ndim = 2 if width else 1
    if arr.ndim != expected_ndim or (width and arr.shape[1] != width):
        raise ValueError(f"{what} have the wrong shape {arr.shape}")
    return arr


def _check_prompts(points, labels, boxes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pts = _as_rows(points, 2, "points (x, y)")
    lbl = _as_rows(labels, 0, "labels", np.int64)
    bxs = _as_rows(boxes, 4, "boxes (x_min, y_min, x_max, y_max)")
    if len(pts) == 0 and len(bxs) == 0:
        raise ValueError("at least one point or box prompt is required")
    if len(lbl) != len(pts):
        raise ValueError(f"got {len(pts)} points but {len(lbl)} labels")
    if not np.isin(lbl, (0, 1)).all():
        raise ValueError("point labels must be 1 (foreground) or 0 (background)")
    if not (np.isfinite(pts).all() and np.isfinite(bxs).all()):
        raise ValueError("point and box coordinates must be finite numbers")
    # Accept corners in either order; SAM expects (top-left, bottom-right).
    bxs = np.concatenate(
        [np.minimum(bxs[:, :2], bxs[:, 2:]), np.maximum(bxs[:, :2], bxs[:, 2:])], axis=1
    )
    return pts, lbl, bxs
