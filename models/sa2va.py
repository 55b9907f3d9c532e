"""Sa2VA: a chat answer about an image or video, with one SAM 2 mask (track) per ``[SEG]`` it says.

Built on transformers' own ``InternVLForConditionalGeneration`` (vision tower, pixel-shuffle
projector, Qwen2 or Llama language model; models.md 3.11), the ``[SEG]`` projection head
``text_hidden_fcs`` and the sam2 package's SAM 2.0 video predictor. Each ``[SEG]``'s last-layer
hidden state, projected, prompts SAM 2 on the key frames (the frames the language model saw); SAM 2
then tracks it through the other frames with :class:`models.sam2_video.Sam2VideoPropagator`.
Official checkpoint directories load with strict keys; ``tests/parity/sa2va_*`` hold the golden
references and their READMEs describe every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint_dir import load_state_strict, load_weights, weight_files
from models.sa2va_config import TOKENS_PER_TILE, Sa2vaConfig, read_config
from models.sa2va_inputs import (IMG_CONTEXT, SAM_NORMALISATION, SEG_TOKEN, STOP_WORDS, frame_tiles, image_tiles,
                                 prompt_text, region_token_masks, tiles_to_pixels)
from models.sa2va_sam2 import build_predictor
from models.sa2va_weights import split_checkpoint
from models.sam2_video import FrameFeatures, ObjectPrompt, Sam2VideoPropagator, encode_frames

LogitsProcessor = Callable[[torch.Tensor, int], torch.Tensor]  # (raw logits (V,), step) -> logits
SAM_VIDEO_SIZE = 1024  # Sa2VA sets SAM 2's "video size" to its input size; masks are resized after


class PromptTooLong(ValueError):
    """The prompt (with its image tokens) does not fit the language model's context."""


@dataclass
class Prompt:
    """What the language model reads: token ids and the vision rows that fill its <IMG_CONTEXT> slots."""

    text: str
    input_ids: list[int]
    pixel_values: torch.Tensor | None  # (tiles, 3, 448, 448)
    region_masks: np.ndarray | None  # (n, 16, 16) bool, visual prompts on the last tile
    num_key_frames: int  # SAM 2 conditioning frames: 1 for an image, up to 5 for a video, 0 for text


@dataclass
class Generation:
    ids: list[int]  # generated token ids, the stop token included when one was produced
    text: str  # tokenizer.decode(ids).strip(), as the reference's "prediction"
    seg_hidden: torch.Tensor  # (n_seg, H) last-layer states where [SEG] was the input token
    hidden: torch.Tensor  # (n_fed, H): row 0 = last prompt position, row t = generated token t-1 fed back
    finished: bool  # a stop token or stop word ended it (not max_new_tokens)


@dataclass
class Sa2vaResult:
    prediction: str
    generated_ids: list[int]
    masks: list[np.ndarray] = field(default_factory=list)  # one (frames, H, W) bool per [SEG]
    logits: list[torch.Tensor] = field(default_factory=list)  # the matching (frames, H, W) mask logits


class Sa2VA:
    """A loaded Sa2VA checkpoint; calls keep no state between them (one at a time per instance)."""

    def __init__(self, mllm, text_hidden_fcs: torch.nn.Module, predictor, tokenizer, config: Sa2vaConfig,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype if self.device.type != "cpu" else torch.float32
        self.config = config
        self.tokenizer = tokenizer
        self.mllm = mllm.to(self.device, self.dtype).eval()
        self.text_hidden_fcs = text_hidden_fcs.to(self.device, self.dtype).eval()
        self.predictor = predictor.to(self.device).eval() if predictor is not None else None
        self.img_context_id = _token_id(tokenizer, IMG_CONTEXT)
        self.seg_id = _token_id(tokenizer, SEG_TOKEN)
        self.stop_words = STOP_WORDS[config.llm_family]
        self.eos_id = tokenizer.eos_token_id
        self.sam_autocast = self.dtype if self.dtype != torch.float32 else None

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32, with_sam: bool = True) -> "Sa2VA":
        """Load an official Sa2VA directory (strict keys); ``with_sam=False`` skips the SAM 2 weights."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"Sa2VA checkpoint directory not found: {directory}")
        config = read_config(directory)
        mllm_state, sam_state, fcs_state = split_checkpoint(load_weights(directory), config)
        tokenizer = load_tokenizer(directory, config)
        mllm = build_mllm(config, _token_id(tokenizer, IMG_CONTEXT))
        _load_strict(mllm, mllm_state, "language/vision model", directory)
        fcs = build_text_hidden_fcs(config, _prompt_width(sam_state))
        _load_strict(fcs, fcs_state, "text_hidden_fcs", directory)
        predictor = None
        if with_sam:
            predictor = build_predictor(config)
            _load_strict(predictor, sam_state, "grounding SAM 2", directory)
        return cls(mllm, fcs, predictor, tokenizer, config, device, _as_dtype(dtype))

    # ---- prompt ---------------------------------------------------------------------------------

    def prepare(self, text: str, image: np.ndarray | None = None, frames: Sequence[np.ndarray] | None = None,
                region_masks: np.ndarray | None = None, past_text: str = "") -> Prompt:
        """The prompt for ``text`` about an image, video key frames (the first 5 are used) or nothing."""
        if image is not None and frames is not None:
            raise ValueError("give an image or video frames, not both")
        if region_masks is not None and image is None:
            raise ValueError("region masks (visual prompts) need an image")
        if image is not None:
            tiles, key_frames = image_tiles(image), 1
            counts = [len(tiles)]
        elif frames is not None:
            if len(frames) == 0:
                raise ValueError("a video needs at least one frame")
            tiles = frame_tiles(frames)
            counts, key_frames = [1] * len(tiles), len(tiles)
        else:
            tiles, counts, key_frames = [], [], 0
        small = None
        if region_masks is not None:
            region_masks = np.asarray(region_masks, dtype=bool)
            if region_masks.ndim != 3 or region_masks.shape[1:] != image.shape[:2]:
                raise ValueError(f"region masks must be (n, {image.shape[0]}, {image.shape[1]}), "
                                 f"got {region_masks.shape}")
            small = region_token_masks(region_masks)
        full = prompt_text(text, counts, [int(m.sum()) for m in small] if small is not None else (), past_text)
        ids = self.tokenizer.encode(full)
        wanted = TOKENS_PER_TILE * len(tiles) + (int(small.sum()) if small is not None else 0)
        if sum(1 for i in ids if i == self.img_context_id) != wanted:
            raise ValueError(f"the prompt may not contain the {IMG_CONTEXT} token itself")
        if len(ids) >= self.config.max_context:
            raise PromptTooLong(f"the prompt is {len(ids)} tokens with its image tokens; the model's context "
                                f"is {self.config.max_context}")
        pixels = tiles_to_pixels(tiles) if tiles else None
        return Prompt(full, ids, pixels, small, key_frames)

    @torch.inference_mode()
    def embed(self, prompt: Prompt) -> torch.Tensor:
        """``(1, L, H)`` input embeddings: token embeddings with the vision rows in the <IMG_CONTEXT> slots."""
        ids = torch.tensor([prompt.input_ids], device=self.device)
        embeds = self.mllm.get_input_embeddings()(ids)
        if prompt.pixel_values is None:
            return embeds
        vision = self.vision_rows(prompt.pixel_values)  # (tiles, 256, H)
        rows = vision.reshape(-1, vision.shape[-1])
        if prompt.region_masks is not None:
            last = vision[-1]  # the thumbnail (or only tile)
            picked = [last[torch.from_numpy(m.reshape(-1)).to(self.device)] for m in prompt.region_masks]
            rows = torch.cat([rows, *picked], dim=0)
        slots = ids[0] == self.img_context_id
        embeds = embeds.clone()
        embeds[0, slots] = rows.to(embeds.dtype)
        return embeds

    @torch.inference_mode()
    def vision_rows(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """InternViT last layer without CLS, pixel shuffle 0.5, ``mlp1``: ``(tiles, 256, H)``."""
        features = self.mllm.model.get_image_features(
            pixel_values=pixel_values.to(self.device, self.dtype), vision_feature_layer=-1,
            vision_feature_select_strategy="default")
        if not isinstance(features, torch.Tensor):
            features = features.pooler_output if getattr(features, "pooler_output", None) is not None else features[0]
        return features.reshape(pixel_values.shape[0], TOKENS_PER_TILE, -1)

    # ---- generation -----------------------------------------------------------------------------

    def stream(self, prompt: Prompt, max_new_tokens: int = 2048,
               logits_processor: LogitsProcessor | None = None) -> Iterator[int | Generation]:
        """Greedy decoding that yields each token id as it is chosen, then the :class:`Generation`.

        It stops at the tokenizer's eos, at a template stop word at the end of the decoded text, or
        after ``max_new_tokens``. Only the last layer's states are kept.
        """
        from transformers import DynamicCache

        embeds = self.embed(prompt)
        if embeds.shape[1] + max_new_tokens > self.config.max_context:
            max_new_tokens = max(1, self.config.max_context - embeds.shape[1])
        lm = self.mllm.model.language_model
        head = self.mllm.lm_head
        token_embed = self.mllm.get_input_embeddings()
        cache = DynamicCache()
        ids: list[int] = []
        hidden_rows: list[torch.Tensor] = []
        finished = False
        step_input = embeds
        with torch.inference_mode():
            for step in range(max_new_tokens):
                out = lm(inputs_embeds=step_input, past_key_values=cache, use_cache=True)
                last = out.last_hidden_state[0, -1]
                hidden_rows.append(last.float())
                logits = head(last[None])[0].float()
                if logits_processor is not None:
                    logits = logits_processor(logits, step)
                token = int(torch.argmax(logits))
                ids.append(token)
                yield token
                if token == self.eos_id or self._ends_with_stop_word(ids):
                    finished = True
                    break
                if step + 1 < max_new_tokens:
                    step_input = token_embed(torch.tensor([[token]], device=self.device))
        hidden = torch.stack(hidden_rows)
        positions = [p for p, t in enumerate(ids[:-1]) if t == self.seg_id]
        seg_hidden = hidden[[1 + p for p in positions]] if positions else hidden.new_zeros(0, hidden.shape[1])
        text = self.tokenizer.decode(ids, skip_special_tokens=False).strip()
        yield Generation(ids, text, seg_hidden, hidden, finished)

    def generate(self, prompt: Prompt, max_new_tokens: int = 2048,
                 logits_processor: LogitsProcessor | None = None) -> Generation:
        *_, generation = self.stream(prompt, max_new_tokens, logits_processor)
        return generation

    def _ends_with_stop_word(self, ids: list[int]) -> bool:
        # The reference re-decodes everything each step; the tail is enough to see a stop word.
        tail = self.tokenizer.decode(ids[-8:], skip_special_tokens=False)
        return any(tail.endswith(w) for w in self.stop_words)

    @torch.inference_mode()
    def seg_embeddings(self, generation: Generation) -> torch.Tensor:
        """``(n_seg, prompt width)`` SAM 2 prompts from the [SEG] states (``text_hidden_fcs``)."""
        rows = generation.seg_hidden.to(self.device, self.dtype)
        return self.text_hidden_fcs(rows).float()

    # ---- SAM 2 ----------------------------------------------------------------------------------

    def encode_frames(self, frames: Sequence[np.ndarray]) -> list[FrameFeatures]:
        """SAM 2 image-encoder features of each frame (1024 bicubic resize, Sa2VA's normalisation)."""
        self._need_sam()
        return encode_frames(self.predictor, frames, autocast_dtype=self.sam_autocast,
                             normalisation=SAM_NORMALISATION)

    def propagator(self, seg_embeddings: torch.Tensor, num_frames: int, num_key_frames: int,
                   chunk_size: int) -> Sam2VideoPropagator:
        """A SAM 2 propagator with every [SEG] (object id = its index) prompted on each key frame."""
        self._need_sam()
        prompts = [ObjectPrompt(obj, frame, embedding=seg_embeddings[obj].cpu().numpy())
                   for obj in range(seg_embeddings.shape[0]) for frame in range(min(num_key_frames, num_frames))]
        return Sam2VideoPropagator(self.predictor, num_frames, SAM_VIDEO_SIZE, SAM_VIDEO_SIZE, prompts,
                                   chunk_size, autocast_dtype=self.sam_autocast)

    def segment(self, seg_embeddings: torch.Tensor, frames: Sequence[np.ndarray], num_key_frames: int,
                chunk_size: int = 16) -> list[torch.Tensor]:
        """Mask logits ``(frames, H, W)`` per [SEG], all frames encoded in this process."""
        height, width = frames[0].shape[:2]
        prop = self.propagator(seg_embeddings, len(frames), num_key_frames, chunk_size)
        features = self.encode_frames(frames)
        prop.prepare({f: features[f] for f in prop.prompt_frames})
        out = torch.empty(seg_embeddings.shape[0], len(frames), height, width)
        for step in list(prop.remaining_steps):
            for result in prop.run_step({f: features[f] for f in step.frames}):
                out[:, result.frame_idx] = to_video_size(result.mask_logits, height, width)
        return list(out)

    # ---- everything -----------------------------------------------------------------------------

    def predict_forward(self, text: str, image: np.ndarray | None = None,
                        frames: Sequence[np.ndarray] | None = None, region_masks: np.ndarray | None = None,
                        max_new_tokens: int = 2048, logits_processor: LogitsProcessor | None = None) -> Sa2vaResult:
        """The reference's ``predict_forward``: answer text and one ``(frames, H, W)`` mask per [SEG]."""
        prompt = self.prepare(text, image=image, frames=frames, region_masks=region_masks)
        generation = self.generate(prompt, max_new_tokens, logits_processor)
        result = Sa2vaResult(generation.text, generation.ids)
        if prompt.num_key_frames == 0 or generation.seg_hidden.shape[0] == 0:
            return result
        media = [image] if image is not None else list(frames)
        result.logits = self.segment(self.seg_embeddings(generation), media, prompt.num_key_frames)
        result.masks = [(x > 0).numpy() for x in result.logits]
        return result

    def _need_sam(self) -> None:
        if self.predictor is None:
            raise RuntimeError("this Sa2VA instance was loaded without its SAM 2 weights")


def to_video_size(logits_1024: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The second step of Sa2VA's two-step upsampling: 1024x1024 logits -> (height, width), bilinear."""
    return F.interpolate(logits_1024[:, None].float(), size=(height, width), mode="bilinear",
                         align_corners=False)[:, 0]


def load_grounding_predictor(directory: str | Path, device: str | torch.device = "cpu"):
    """Only the SAM 2 video predictor of a Sa2VA directory (for frame-encoding workers).

    Reads just the ``grounding_encoder.sam2_model.*`` tensors of the (possibly sharded) checkpoint.
    """
    from safetensors import safe_open

    from models.sa2va_weights import SAM_PREFIX

    directory = Path(directory)
    config = read_config(directory)
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                if key.startswith(SAM_PREFIX):
                    state[key] = f.get_tensor(key)
    _, sam_state, _ = split_checkpoint(state, config)
    predictor = build_predictor(config)
    _load_strict(predictor, sam_state, "grounding SAM 2", directory)
    return predictor.to(device).eval()


def build_mllm(config: Sa2vaConfig, image_token_id: int, empty: bool = True):
    """transformers' InternVL for ``config``; ``empty`` builds it on the meta device (load weights next)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration, LlamaConfig, Qwen2Config

    text_cls = Qwen2Config if config.llm_family == "qwen2" else LlamaConfig
    cfg = InternVLConfig(vision_config=dict(config.vision), text_config=text_cls(**config.text),
                         image_token_id=image_token_id, downsample_ratio=0.5, projector_hidden_act="gelu",
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    # On the meta device the model costs nothing to build (no random init of billions of weights);
    # the strict load allocates and fills it. The rotary tables are not weights: they are rebuilt.
    with torch.device("meta") if empty else torch.device("cpu"):
        model = InternVLForConditionalGeneration(cfg)
    lm = model.model.language_model
    lm.rotary_emb = type(lm.rotary_emb)(config=lm.config)
    return model


def build_text_hidden_fcs(config: Sa2vaConfig, out_dim: int) -> torch.nn.Module:
    h = config.llm_hidden_size
    # Keys text_hidden_fcs.0 / .2, as the checkpoint has them (ReLU at 1, Dropout(0) at 3).
    return torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(inplace=True), torch.nn.Linear(h, out_dim),
                               torch.nn.Dropout(0.0))


def load_tokenizer(directory: str | Path, config: Sa2vaConfig | None = None):
    directory = Path(directory)
    config = config or read_config(directory)
    if config.llm_family == "internlm2":
        from models.internlm2_tokenizer import InternLM2Tokenizer

        return InternLM2Tokenizer(directory)
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(directory), local_files_only=True)


def _prompt_width(sam_state: dict[str, torch.Tensor]) -> int:
    key = "sam_prompt_encoder.not_a_point_embed.weight"
    if key not in sam_state:
        raise ValueError(f"the checkpoint has no grounding_encoder.sam2_model.{key}")
    return int(sam_state[key].shape[-1])


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source) -> None:
    load_state_strict(module, state, f"{source}: the {what} weights do not match its architecture")


def _token_id(tokenizer, token: str) -> int:
    vocab = tokenizer.get_added_vocab()
    if token not in vocab:
        raise ValueError(f"the tokenizer has no {token} token: not a Sa2VA tokenizer")
    return int(vocab[token])


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


