"""Open-vocabulary box detection with Grounding DINO: an RGB image and a text phrase in, boxes out.

Runs transformers' ``GroundingDinoForObjectDetection`` with its ``GroundingDinoProcessor`` (image
resize/normalise, BERT tokenizer, and the grounded post-processing) from a local directory in the
Hugging Face layout of ``IDEA-Research/grounding-dino-tiny`` / ``-base``. Nothing is downloaded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from models.image_io import check_rgb_image
import torch
from PIL import Image


@dataclass(frozen=True)
class Detection:
    """One detected box: ``(x0, y0, x1, y1)`` in pixels of the input image, inside the image."""

    box: tuple[float, float, float, float]
    score: float
    label: str  # the prompt words that matched this box, e.g. "red ball"; may be ""


def normalize_phrase(phrase: str) -> str:
    """Return ``phrase`` the way Grounding DINO was trained to read it: lower case, ending in ".".

    The model splits its text at ``.`` (and ``?``) into separate phrases, one label each, so
    ``"a cat. a red ball"`` asks for two kinds of object. Raises ``ValueError`` naming ``prompt``
    when nothing but whitespace and periods is left.
    """
    if not isinstance(phrase, str):
        raise ValueError(f"prompt must be a string, got {type(phrase).__name__}")
    text = phrase.strip().lower()
    if not text.strip(". \t\r\n"):
        raise ValueError("prompt must not be empty: give a phrase such as 'a red ball'")
    return text if text.endswith(".") else text + "."


class GroundingDino:
    """Find the boxes of the objects a text phrase describes.

    Unlike the SAM 2 predictor it keeps nothing between calls: no image features, no reset.
    """

    def __init__(self, model: torch.nn.Module, processor, loading_info: dict | None = None):
        self.model = model.eval()
        self.processor = processor
        # transformers' report of what from_pretrained matched; every entry is empty for a
        # checkpoint that fits the architecture exactly.
        self.loading_info: dict = loading_info or {}
        self.max_text_len: int = int(model.config.max_text_len)
        self._special_tokens = list(processor.tokenizer.all_special_tokens)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> "GroundingDino":
        """Load the model and processor from ``directory`` (never from the Hub).

        Raises ``ValueError`` when weights are missing or have the wrong shape, because those
        parameters would otherwise run with random values. Unexpected extra weights only warn.
        """
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"no Grounding DINO checkpoint (config.json) in {directory}")
        model, info = GroundingDinoForObjectDetection.from_pretrained(
            directory, dtype=dtype, local_files_only=True, output_loading_info=True
        )
        bad = {k: sorted(info.get(k) or []) for k in ("missing_keys", "mismatched_keys")}
        if any(bad.values()):
            raise ValueError(f"checkpoint in {directory} does not fit GroundingDino: {bad}")
        if info.get("unexpected_keys"):
            warnings.warn(
                f"ignored {len(info['unexpected_keys'])} unexpected weights in {directory}: "
                f"{sorted(info['unexpected_keys'])[:5]}",
                stacklevel=2,
            )
        processor = GroundingDinoProcessor.from_pretrained(directory, local_files_only=True)
        return cls(model.to(device), processor, loading_info=info)

    def _pad_to_processable(self, image: np.ndarray) -> np.ndarray:
        """Pad very elongated images (bottom or right, black) to the processor's widest aspect ratio.

        The processor scales the short side to `shortest_edge` unless the long side would pass
        `longest_edge`; a 1x500 image would then get a short side of 0 pixels and fail. Padding on
        the bottom/right leaves pixel coordinates unchanged.
        """
        size = getattr(self.processor.image_processor, "size", None) or {}
        shortest, longest = size.get("shortest_edge"), size.get("longest_edge")
        if not shortest or not longest:
            return image
        height, width = image.shape[:2]
        limit = longest / shortest
        if max(height, width) / min(height, width) <= limit:
            return image
        target_h = max(height, int(np.ceil(width / limit)))
        target_w = max(width, int(np.ceil(height / limit)))
        out = np.zeros((target_h, target_w, 3), dtype=np.uint8)
        out[:height, :width] = image
        return out

    def detect(
        self,
        image_rgb_uint8: np.ndarray,
        phrase: str,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        max_boxes: int | None = None,
    ) -> list[Detection]:
        """Return the boxes for ``phrase`` in ``image_rgb_uint8`` (``(H, W, 3)`` uint8), best first.

        ``phrase`` is normalised with :func:`normalize_phrase`. A box is kept when its score (the
        highest token probability, as in the reference implementation) is strictly above
        ``box_threshold``; its label is made of the prompt tokens whose probability is strictly
        above ``text_threshold``. ``max_boxes`` keeps only that many of the best.
        """
        image = check_rgb_image(image_rgb_uint8)
        text = normalize_phrase(phrase)
        box_threshold = _check_threshold(box_threshold, "box_threshold")
        text_threshold = _check_threshold(text_threshold, "text_threshold")
        if max_boxes is not None and (
            isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1
        ):
            raise ValueError(f"max_boxes must be a positive integer or None, got {max_boxes!r}")

        height, width = image.shape[:2]
        padded = self._pad_to_processable(image)
        # A PIL image, not the array: the processor guesses the channel axis of arrays and can
        # guess wrong for images only a few pixels wide.
        inputs = self.processor(images=Image.fromarray(padded), text=text, return_tensors="pt")
        n_tokens = int(inputs["input_ids"].shape[1])
        if n_tokens > self.max_text_len:
            # The model would silently drop every phrase past this point.
            raise ValueError(
                f"prompt is too long: {n_tokens} tokens, "
                f"the model reads at most {self.max_text_len}"
            )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)

        with torch.inference_mode():
            outputs = self.model(**inputs)
            # Thresholds compare in float32 even for a bf16/fp16 model.
            outputs["logits"] = outputs.logits.float()
            outputs["pred_boxes"] = outputs.pred_boxes.float()
            result = self.processor.post_process_grounded_object_detection(
                outputs,
                input_ids=inputs["input_ids"],
                threshold=box_threshold,
                text_threshold=text_threshold,
                target_sizes=[padded.shape[:2]],
            )[0]

        scores = result["scores"].cpu()
        # Boxes are centre +- half size, so a box near the border (or in the padding) reaches past
        # the image; clip to its pixels.
        boxes = result["boxes"].cpu().clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        order = torch.argsort(scores, descending=True, stable=True)
        if max_boxes is not None:
            order = order[:max_boxes]
        labels = result["text_labels"]
        return [
            Detection(
                box=tuple(float(v) for v in boxes[i].tolist()),
                score=float(scores[i]),
                label=self._clean_label(labels[i]),
            )
            for i in order.tolist()
        ]

    def _clean_label(self, label: str) -> str:
        # transformers 5.23 blanks only the first and the 256th token position when it picks the
        # label tokens, so the [SEP] that ends the prompt can leak into labels; the reference
        # implementation also strips the phrase-ending periods.
        for token in self._special_tokens:
            label = label.replace(token, " ")
        return " ".join(label.replace(".", " ").split())


def _check_threshold(value: float, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value
