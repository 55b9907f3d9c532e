"""EVF-SAM2: text-prompted segmentation, one boolean mask per (image, prompt).

A BEiT-3 multiway encoder (torchscale) reads the image and the prompt together; its vision [CLS]
output, projected by ``text_hidden_fcs``, is the only sparse prompt of a SAM 2.0 mask decoder
(``sam2`` package). Official checkpoint directories load with strict key matching.

Two behaviours exist for the same weights (models.md 2.2): ``multitask`` (``*-multitask``
checkpoints, which ship the ``[semantic]`` token) and ``legacy`` (the original checkpoints).
They differ in the SAM 2 input resize and in how the mask token is chosen. The numbers follow
the reference implementation; ``tests/parity/evf_sam2`` holds the golden references and its
README describes every step.
"""

from __future__ import annotations

import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.checkpoint_dir import load_state_strict, load_weights
from models.evf_sam2_config import EvfSam2Config, read_config
from models.image_io import check_rgb_image
from models.sam2_embedded import rebuild_sam_heads

Mode = Literal["multitask", "legacy"]
MODES: tuple[str, ...] = ("multitask", "legacy")

SEMANTIC_TOKEN = "[semantic]"
BEIT3_IMAGE_SIZE = 224
# ImageNet statistics in the 0-255 domain, as SAM 2's transforms use them.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
# Legacy single-mask fallback: SAM 2's dynamic_multimask_via_stability settings, which
# build_sam2(apply_postprocessing=True) switched on for the upstream image model.
STABILITY_DELTA = 0.05
STABILITY_THRESH = 0.98
# Text positions of BEiT-3 start at 2 (fairseq convention), so the table holds 2 fewer tokens.
_POSITION_OFFSET = 2

# EVF renamed the memory-fuser layer scale ``gamma`` (transformers' loader rewrites that name);
# Sa2VA calls it ``g_weight``. Both map back to the sam2 package's ``gamma`` (models.md 2.10).
_FUSER = r"^(visual_model\.memory_encoder\.fuser\.layers\.\d+)"
_FUSER_SCALE = re.compile(_FUSER + r"\.(weight|g_weight)$")
_FUSER_GAMMA = re.compile(_FUSER + r"\.gamma$")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EvfResult:
    """One prediction. ``mask_logits`` and ``mask`` have the input image's ``(H, W)``."""

    mask_logits: np.ndarray  # float32
    mask: np.ndarray  # bool, mask_logits > 0
    mask_token: int  # which of the decoder's 4 mask tokens was kept (0 = single-mask token)
    iou_score: float  # the decoder's predicted IoU for that token
    mode: str


class EvfSam2Net(torch.nn.Module):
    """The module graph, named like the checkpoint: ``mm_extractor.beit3``, ``text_hidden_fcs``,
    ``visual_model``. Weights are random until a state dict is loaded."""

    def __init__(self, config: EvfSam2Config, beit3_device: str | torch.device | None = None):
        super().__init__()
        self.config = config
        with warnings.catch_warnings():
            # torchscale/fairscale use torch.jit.script at import, deprecated in torch 2.14.
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.script.*", category=FutureWarning
            )
            from torchscale.architecture.config import EncoderConfig
            from torchscale.model.BEiT3 import BEiT3

        self.mm_extractor = torch.nn.Module()
        # On the meta device BEiT-3 costs nothing to build (no random init of ~670M weights);
        # load_strict allocates and fills it. Random-init users pass None.
        with torch.device(beit3_device) if beit3_device is not None else nullcontext():
            self.mm_extractor.beit3 = BEiT3(EncoderConfig(**config.beit3))
        h, out = config.hidden_size, config.out_dim
        projector = torch.nn.Sequential(
            torch.nn.Linear(h, h), torch.nn.ReLU(inplace=True), torch.nn.Linear(h, out)
        )
        self.text_hidden_fcs = torch.nn.ModuleList([projector])
        self.visual_model = build_sam2_image_model(config)
        if self.visual_model.sam_prompt_embed_dim != out:
            raise ValueError(
                f"config.json out_dim={out} differs from the SAM 2 prompt width "
                f"{self.visual_model.sam_prompt_embed_dim}"
            )
        self.eval()


def build_sam2_image_model(config: EvfSam2Config) -> torch.nn.Module:
    """SAM2Base for ``config`` with random weights (its image path is all EVF uses)."""
    from sam2.build_sam import build_sam2  # imported late: importing sam2 initialises Hydra

    model = build_sam2(
        config.sam2_config,
        ckpt_path=None,
        device="cpu",
        mode="eval",
        hydra_overrides_extra=list(config.sam2_overrides),
    )
    rebuild_sam_heads(model, config.sam_heads)
    return model.eval()


def checkpoint_from_module_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename module keys to the official checkpoint's (``gamma`` -> ``weight``)."""
    return {_FUSER_GAMMA.sub(r"\1.weight", k): v for k, v in state.items()}


def checkpoint_to_module_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to the module's (only the fuser layer scale differs)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = _FUSER_SCALE.sub(r"\1.gamma", key)
        if new_key in renamed:
            raise ValueError(f"the checkpoint holds {new_key!r} under two names")
        renamed[new_key] = value
    return renamed


def load_strict(
    net: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Load ``state`` into ``net``: every key present, none extra, every shape equal.

    Stored dtypes may differ from the module's (real checkpoints mix fp16 and fp32); they are
    cast to the module's on copy. Raises ``ValueError`` naming the offending keys.
    """
    load_state_strict(net, checkpoint_to_module_keys(state), f"{source} does not match the EVF-SAM2 architecture")


class EvfSam2:
    """A loaded EVF-SAM2 checkpoint. It keeps no per-request state, so calls may come one
    after another or from several threads (each call needs its own activation memory)."""

    def __init__(
        self,
        net: EvfSam2Net,
        tokenizer,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ):
        self.device = torch.device(device)
        self.dtype = _as_dtype(dtype)
        self.tokenizer = tokenizer
        self.multitask = SEMANTIC_TOKEN in tokenizer.get_added_vocab()
        self.default_mode: str = "multitask" if self.multitask else "legacy"

        net = net.eval()
        sam = net.visual_model
        with torch.no_grad():
            # Image-independent decoder inputs, computed once in fp32: the random-Fourier PE
            # builds an fp32 grid and cannot run on fp16 weights.
            self._image_pe = sam.sam_prompt_encoder.get_dense_pe().float()
            grid = sam.sam_image_embedding_size
            no_mask = sam.sam_prompt_encoder.no_mask_embed.weight.float()
            self._dense_embed = no_mask.reshape(1, -1, 1, 1).expand(1, -1, grid, grid)
        self.net = net.to(device=self.device, dtype=self.dtype)
        self._image_pe = self._image_pe.to(self.device, self.dtype)
        self._dense_embed = self._dense_embed.to(self.device, self.dtype)
        self.sam_image_size = int(sam.image_size)
        positions = net.config.beit3.get("max_source_positions", 1024)
        self.max_prompt_tokens = positions - _POSITION_OFFSET

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> "EvfSam2":
        """Load an official EVF-SAM2 checkpoint directory (strict keys) and its tokenizer."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"EVF-SAM2 checkpoint directory not found: {directory}")
        state = load_weights(directory)
        config = read_config(directory, checkpoint_keys=set(state))
        net = EvfSam2Net(config, beit3_device="meta")
        load_strict(net, state, source=str(directory))
        del state
        return cls(net, load_tokenizer(directory), device=device, dtype=dtype)

    # ---- text ---------------------------------------------------------------------------------

    def prompt_text(self, prompt: str, semantic: bool = False) -> str:
        """The text that is tokenized: the prompt verbatim, ``"[semantic] "`` in front if asked."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt must be a non-empty string")
        if semantic:
            if not self.multitask:
                raise ValueError(
                    "semantic=True needs a multitask EVF-SAM2 checkpoint (its tokenizer has the "
                    f"{SEMANTIC_TOKEN} token); this checkpoint has none"
                )
            return f"{SEMANTIC_TOKEN} {prompt}"
        return prompt

    def tokenize(self, text: str) -> list[int]:
        """``[<s>, ...pieces..., </s>]``, no padding, no truncation (truncating would change the
        prompt's meaning, so a too-long prompt is refused)."""
        ids = [int(i) for i in self.tokenizer(text).input_ids]
        if len(ids) > self.max_prompt_tokens:
            raise ValueError(
                f"the prompt is {len(ids)} tokens long; at most {self.max_prompt_tokens} fit"
            )
        return ids

    # ---- inference ----------------------------------------------------------------------------

    def predict(
        self,
        image: np.ndarray,
        prompt: str,
        mode: Mode | None = None,
        semantic: bool = False,
        trace: dict | None = None,
    ) -> EvfResult:
        """Segment what ``prompt`` describes in ``image`` (``(H, W, 3)`` uint8 RGB).

        ``mode`` defaults to the checkpoint's behaviour (multitask if it has the ``[semantic]``
        token, else legacy). ``semantic=True`` asks a multitask checkpoint for all instances /
        stuff as one mask. ``trace``, when given, is filled with every intermediate under the
        parity pack's names (numpy arrays; for tests and debugging).
        """
        image = check_rgb_image(image)
        mode = self.default_mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        input_ids = self.tokenize(self.prompt_text(prompt, semantic))
        _record(trace, "input_ids", torch.tensor([input_ids]))

        with torch.inference_mode(), self._autocast():
            prompt_embed = self._prompt_embedding(image, input_ids, trace)
            image_embed, high_res = self._image_features(image, mode, trace)
            all_logits, all_iou = self._decode(image_embed, high_res, prompt_embed, trace)
            token, stability = select_mask_token(all_logits[0], all_iou[0], mode)
            low_res = all_logits[:, token : token + 1].float()
            logits = F.interpolate(
                low_res, image.shape[:2], mode="bilinear", align_corners=False
            )[0]
        _record(trace, "low_res_mask_selected", low_res)
        _record(trace, "pred_mask_logits", logits)
        _record(trace, "pred_mask", logits > 0)
        if trace is not None:
            trace["selected_mask_token"] = token
            if stability is not None:
                trace["stability_score_token0"] = stability

        logits_np = logits[0].cpu().numpy()
        return EvfResult(
            mask_logits=logits_np,
            mask=logits_np > 0,
            mask_token=token,
            iou_score=float(all_iou[0, token]),
            mode=mode,
        )

    def _autocast(self):
        # Reduced precision runs as upstream does (half weights under autocast): autocast keeps
        # softmax, norms and reductions in fp32.
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _prompt_embedding(self, image: np.ndarray, input_ids: list[int], trace) -> torch.Tensor:
        pixels = beit3_input(image)
        _record(trace, "image_beit", pixels)
        ids = torch.tensor([input_ids], device=self.device)
        out = self.net.mm_extractor.beit3(
            visual_tokens=pixels[None].to(self.device, self.dtype),
            textual_tokens=ids,
            text_padding_position=torch.zeros_like(ids, dtype=torch.bool),
        )["encoder_out"]
        _record(trace, "beit3_encoder_out", out)
        # Row 0 is the *vision* [CLS] token: it has attended to the text in every layer.
        prompt_embed = self.net.text_hidden_fcs[0](out[:, :1])
        _record(trace, "prompt_embed", prompt_embed)
        return prompt_embed

    def _image_features(self, image: np.ndarray, mode: str, trace):
        if mode == "multitask":
            resized, pixels = sam_input_multitask(image, self.sam_image_size)
            _record(trace, "sam_input_uint8", resized)
        else:
            resized, pixels = sam_input_legacy(image, self.sam_image_size)
            _record(trace, "sam_resized_uint8", resized)
        _record(trace, "sam_input", pixels)

        sam = self.net.visual_model
        # forward_image applies conv_s0 / conv_s1 to the two high-resolution levels already.
        levels = sam.forward_image(pixels[None].to(self.device, self.dtype))["backbone_fpn"]
        # The FPN neck upsamples in fp32, so with fp16/bf16 weights some levels come out fp32.
        levels = [level.to(self.dtype) for level in levels]
        feat_s0, feat_s1, top = levels[-3], levels[-2], levels[-1]
        # A single image is its own conditioning frame with no memory: SAM 2 adds no_mem_embed.
        image_embed = top + sam.no_mem_embed.reshape(1, -1, 1, 1)
        _record(trace, "sam_image_embed", image_embed)
        _record(trace, "sam_high_res_feat_s0", feat_s0)
        _record(trace, "sam_high_res_feat_s1", feat_s1)
        return image_embed, [feat_s0, feat_s1]

    def _decode(self, image_embed, high_res, prompt_embed, trace):
        _record(trace, "sam_dense_pe", self._image_pe)
        # The text embedding is the whole sparse prompt (no padding point), the dense prompt is
        # "no mask". predict_masks returns all 4 mask tokens; the mode picks one below.
        masks, iou, _, object_score = self.net.visual_model.sam_mask_decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=self._image_pe,
            sparse_prompt_embeddings=prompt_embed,
            dense_prompt_embeddings=self._dense_embed,
            repeat_image=True,
            high_res_features=high_res,
        )
        _record(trace, "decoder_all_mask_logits", masks)
        _record(trace, "decoder_all_iou", iou)
        _record(trace, "object_score_logits", object_score)
        return masks, iou


def select_mask_token(
    logits: torch.Tensor, iou: torch.Tensor, mode: str
) -> tuple[int, float | None]:
    """Pick one of the decoder's mask tokens from ``logits`` (4, h, w) and ``iou`` (4,).

    multitask: the best of the multimask tokens 1..3 by predicted IoU. legacy: the single-mask
    token 0 unless its stability score is below the threshold, then the best of 1..3. Returns the
    token and, for legacy, token 0's stability score. No object-score suppression: the EVF
    image path has none.
    """
    best_multi = 1 + int(torch.argsort(iou[1:], descending=True)[0])
    if mode == "multitask":
        return best_multi, None
    single = logits[0].flatten()
    area_inner = (single > STABILITY_DELTA).sum().float()
    area_outer = (single > -STABILITY_DELTA).sum().float()
    stability = float(area_inner / area_outer) if area_outer > 0 else 1.0
    return (0 if stability >= STABILITY_THRESH else best_multi), stability


# ---- preprocessing (CPU, fp32; the exact calls matter, see the parity README) ------------------


def beit3_input(image: np.ndarray) -> torch.Tensor:
    """(3, 224, 224) float: [0, 1], bicubic resize WITHOUT antialias, then (x - 0.5) / 0.5."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    size = [BEIT3_IMAGE_SIZE, BEIT3_IMAGE_SIZE]
    # antialias=False on purpose: upstream resizes the tensor, where torchvision used no
    # antialiasing; wide images are downscaled with aliasing and the weights expect that.
    pixels = TF.resize(pixels, size, interpolation=InterpolationMode.BICUBIC, antialias=False)
    return TF.normalize(pixels, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def sam_input_multitask(image: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stretch to ``size`` x ``size`` with bilinear interpolation ON THE uint8 TENSOR, then
    normalise. Returns ``(uint8 (3, S, S), float (3, S, S))``.

    The uint8 kernel rounds differently from "float bilinear then round"; only the same torch
    call on a uint8 CPU tensor reproduces it.
    """
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    resized = F.interpolate(chw[None], (size, size), mode="bilinear", align_corners=False)[0]
    return resized, _normalise_sam(resized.float())


def sam_input_legacy(image: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL bilinear (antialiased) resize of the longest side to ``size``, normalise, then float
    bilinear stretch to ``size`` x ``size``. Returns ``(uint8 (h', w', 3), float (3, S, S))``."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    resized_t = torch.from_numpy(resized.copy())
    pixels = _normalise_sam(resized_t.permute(2, 0, 1).contiguous().float())
    pixels = F.interpolate(pixels[None], (size, size), mode="bilinear", align_corners=False)[0]
    return resized_t, pixels


def _normalise_sam(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(SAM_PIXEL_MEAN).reshape(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).reshape(3, 1, 1)
    return (pixels - mean) / std


# ---- helpers ------------------------------------------------------------------------------------


def load_tokenizer(directory: str | Path):
    """The checkpoint's XLM-R sentencepiece tokenizer (with ``[semantic]`` when it ships it)."""
    from transformers import XLMRobertaTokenizer

    # The class itself rather than AutoTokenizer: AutoTokenizer would read config.json and warn
    # about the unknown model_type "evf". Always the checkpoint's own spm file (models.md 2.3).
    return XLMRobertaTokenizer.from_pretrained(str(directory), padding_side="right")


def _record(trace: dict | None, name: str, tensor: torch.Tensor) -> None:
    if trace is None:
        return
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()
    trace[name] = tensor.numpy().copy()


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype}")
        return dtype
    key = str(dtype).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    return _DTYPES[key]
