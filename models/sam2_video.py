"""SAM 2.1 video segmentation split into parallel per-frame encoding and sequential propagation.

The image encoder needs no memory, so :func:`encode_frames` can run on any range of frames in any
process. :class:`Sam2VideoPropagator` then drives the ``sam2`` video predictor with those features
injected into its inference state (models.md 1.8), one frame range ("step") at a time, forward from
the first prompted frame and then backward to frame 0. At every step boundary its tracking state
can be exported to a small blob and resumed elsewhere with identical results (models.md 1.9).
Results equal a plain ``init_state`` / ``add_new_points_or_box`` / ``propagate_in_video`` run on the
same frames, checkpoint and thread count.
"""

from __future__ import annotations

import contextlib
import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image

from models.sam2_build import resolve_build_args

# One frame's image-encoder output as the video predictor caches it: the ``backbone_fpn`` levels,
# each ``(1, C, h, w)``. The position encodings are left out: they depend only on the shapes.
FrameFeatures = tuple[torch.Tensor, ...]
FeaturesArg = Union[Mapping[int, FrameFeatures], Sequence[FrameFeatures]]
Normalisation = tuple[tuple[float, float, float], tuple[float, float, float]]  # (mean, std) per RGB channel

_IMG_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float32)[:, None, None]
_IMG_STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float32)[:, None, None]
_BLOB_VERSION = 1
_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def load_sam2_video_predictor(checkpoint: str | Path, device: str = "cpu", **build_kwargs):
    """Build a ``SAM2VideoPredictor`` for ``checkpoint`` (same keywords as ``load_sam2``).

    Hole filling is switched off: it needs the ``sam2._C`` extension that the wheel lacks, and
    without it the package only warns on every frame (models.md 1.5).
    """
    from sam2.build_sam import build_sam2_video_predictor

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"SAM 2 checkpoint not found: {checkpoint}")
    config, overrides = resolve_build_args(checkpoint, **build_kwargs)
    predictor = build_sam2_video_predictor(
        config, ckpt_path=str(checkpoint), device=device, mode="eval",
        hydra_overrides_extra=overrides,
    )
    predictor.fill_hole_area = 0
    return predictor.eval()


def frames_to_model_input(
    frames: np.ndarray | Sequence[np.ndarray], image_size: int, normalisation: Normalisation | None = None,
) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, 3, S, S)`` float32, normalised.

    Bitwise equal to what the video predictor's own frame loader produces from the same pixels:
    PIL's default (bicubic) resize, scaling in float64, then ImageNet normalisation in float32.
    ``normalisation`` = (mean, std) replaces the ImageNet statistics (Sa2VA uses bf16-rounded ones).
    """
    mean, std = (_IMG_MEAN, _IMG_STD) if normalisation is None else (
        torch.tensor(normalisation[0], dtype=torch.float32)[:, None, None],
        torch.tensor(normalisation[1], dtype=torch.float32)[:, None, None])
    out = torch.empty(len(frames), 3, image_size, image_size, dtype=torch.float32)
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {frame.dtype} {frame.shape}")
        resized = np.array(Image.fromarray(frame).resize((image_size, image_size)))
        out[i] = torch.from_numpy(resized / 255.0).permute(2, 0, 1)
    out -= mean
    out /= std
    return out


@torch.inference_mode()
def encode_frames(
    model: torch.nn.Module,
    frames: np.ndarray | Sequence[np.ndarray],
    batch_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    normalisation: Normalisation | None = None,
) -> list[FrameFeatures]:
    """Run the image encoder on ``frames``; return one :data:`FrameFeatures` per frame, on CPU.

    Any SAM 2 model built from the same checkpoint works (image model or video predictor). Keep
    ``batch_size=1`` for results bitwise equal to the video predictor's own encoding; larger
    batches are faster on a GPU but differ by about 1e-6 (models.md 1.8). Use the propagator's
    ``autocast_dtype``: under autocast the predictor encodes its frames in that dtype too.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model.device
    features: list[FrameFeatures] = []
    for lo in range(0, len(frames), batch_size):
        batch = frames_to_model_input(frames[lo:lo + batch_size], int(model.image_size), normalisation)
        with _autocast(device, autocast_dtype):
            fpn = model.forward_image(batch.to(device))["backbone_fpn"]
        for i in range(batch.shape[0]):
            # A copy per frame: a slice would drag the whole batch along when pickled.
            features.append(tuple(level[i:i + 1].to("cpu", copy=True) for level in fpn))
    return features


@dataclass(frozen=True)
class ObjectPrompt:
    """A prompt for one object on one frame, in pixel coordinates of the video.

    Points ``(x, y)`` with labels 1 (foreground) or 0 (background) and/or a box
    ``(x_min, y_min, x_max, y_max)``; or instead an ``(H, W)`` boolean ``mask``; or instead an
    ``embedding``: a prompt-width vector appended to SAM's "no points" sparse prompt, which makes
    the frame an initial conditioning frame of its own (Sa2VA's ``[SEG]`` prompts, models.md 3.9).
    """

    obj_id: int
    frame_idx: int
    points: Sequence[tuple[float, float]] = ()
    labels: Sequence[int] = ()
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class Step:
    """Frames ``[start, stop)``, processed in descending order when ``reverse``."""

    start: int
    stop: int
    reverse: bool

    @property
    def frames(self) -> range:
        if self.reverse:
            return range(self.stop - 1, self.start - 1, -1)
        return range(self.start, self.stop)


@dataclass(frozen=True)
class FrameResult:
    frame_idx: int
    obj_ids: list[int]
    mask_logits: torch.Tensor  # (num_objects, H, W) float32 on CPU, at video resolution

    def masks(self) -> np.ndarray:
        """``(num_objects, H, W)`` bool: the predictor's threshold, logits > 0."""
        return (self.mask_logits > 0).numpy()


def plan_steps(num_frames: int, first_prompt_frame: int, chunk_size: int) -> list[Step]:
    """The order in which a propagator consumes frames, cut on the grid ``k * chunk_size``.

    Forward from the first prompted frame to the end, then, when that frame is not frame 0,
    backward from it to frame 0, as ``propagate_in_video`` and then ``reverse=True`` do.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0 <= first_prompt_frame < num_frames:
        raise ValueError(f"first prompt frame {first_prompt_frame} is outside [0, {num_frames})")
    s = first_prompt_frame
    grid = [(lo, min(lo + chunk_size, num_frames)) for lo in range(0, num_frames, chunk_size)]
    steps = [Step(max(lo, s), hi, False) for lo, hi in grid if hi > s]
    if s > 0:
        steps += [Step(lo, min(hi, s + 1), True) for lo, hi in reversed(grid) if lo <= s]
    return steps


class _MissingFrames:
    """Stands in for the decoded video: the predictor may only use injected features."""

    def __init__(self, num_frames: int):
        self.num_frames = num_frames

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, frame_idx):
        raise LookupError(f"the features of frame {frame_idx} were not provided")


def _upcast_bf16_memory(module, args, kwargs):
    # The predictor stores memories in bf16 and relies on torch.cat with fp32 object pointers to
    # promote them. An object tracked before its only (later) prompt has no past pointers, so an
    # fp32 run fails with a dtype mismatch (models.md 1.10). Upcasting is exactly the promotion
    # torch.cat does whenever a pointer is present, so every run that worked gives the same numbers.
    memory, curr = kwargs.get("memory"), kwargs.get("curr")
    if memory is None or curr is None:
        return None
    ref = curr[0] if isinstance(curr, (list, tuple)) else curr
    if memory.dtype == ref.dtype or torch.is_autocast_enabled(ref.device.type):
        return None
    return args, {**kwargs, "memory": memory.to(ref.dtype)}


def _install_memory_upcast(predictor) -> None:
    if not getattr(predictor, "_visus_memory_upcast", False):
        predictor.memory_attention.register_forward_pre_hook(_upcast_bf16_memory, with_kwargs=True)
        predictor._visus_memory_upcast = True


def _new_inference_state(predictor, num_frames: int, height: int, width: int) -> dict:
    # The same keys as SAM2VideoPredictor.init_state, without loading frames or encoding frame 0.
    device = predictor.device
    return {
        "images": _MissingFrames(num_frames),
        "num_frames": num_frames,
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": height,
        "video_width": width,
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


class Sam2VideoPropagator:
    """Track prompted objects through a video whose frame features arrive range by range.

    Usage::

        prop = Sam2VideoPropagator(predictor, num_frames, height, width, prompts, chunk_size)
        prop.prepare({f: feats[f] for f in prop.prompt_frames})
        for step in prop.remaining_steps:
            for result in prop.run_step(features_for(step.start, step.stop)):
                ...
            blob = prop.export_state()        # optional: resume with from_state(predictor, blob)

    Each frame is yielded exactly once. The first prompted frame ``s`` is yielded in the backward
    pass when there is one (``s > 0``), because that pass recomputes it for objects first
    prompted later, and the plain predictor's last result for it is the backward one.

    Memory stays bounded: a frame's features are dropped once the frame is processed, and
    tracking records are kept only for the frames later frames can still attend to.

    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the model under ``torch.autocast`` as the
    upstream demos do on GPUs. The predictor gets a hook that lets fp32 runs track an object before
    its first prompt (see ``_upcast_bf16_memory``); it changes no result that worked without it.
    """

    def __init__(
        self,
        predictor,
        num_frames: int,
        height: int,
        width: int,
        prompts: Sequence[ObjectPrompt],
        chunk_size: int,
        autocast_dtype: torch.dtype | None = None,
    ):
        if num_frames < 1 or height < 1 or width < 1:
            raise ValueError(f"bad video shape: {num_frames} frames of {width}x{height}")
        self.prompts = _check_prompts(prompts, int(num_frames), int(height), int(width))
        first = min(p.frame_idx for p in self.prompts)
        self._setup(
            predictor, int(num_frames), int(height), int(width), first, int(chunk_size),
            plan_steps(int(num_frames), first, int(chunk_size)), 0, autocast_dtype,
        )
        self._prepared = False

    def _setup(self, predictor, num_frames, height, width, first_prompt_frame, chunk_size, steps,
               next_step, autocast_dtype) -> None:
        _check_predictor(predictor)
        self.predictor = predictor
        self.num_frames, self.height, self.width = num_frames, height, width
        self.first_prompt_frame = first_prompt_frame
        self.chunk_size = chunk_size
        self.steps: list[Step] = steps
        self.next_step = next_step
        self.autocast_dtype = autocast_dtype
        self._state = _new_inference_state(predictor, num_frames, height, width)
        self._pos_enc: list[torch.Tensor] | None = None
        self._in_step = False
        self._broken = False
        # How far back (forward) or ahead (backward) a frame may read memories and pointers.
        stride = predictor.memory_temporal_stride_for_eval
        self._window = max(
            predictor.max_obj_ptrs_in_encoder - 1, 1 + stride * (predictor.num_maskmem - 2)
        )
        _install_memory_upcast(predictor)

    # -- public API ---------------------------------------------------------------------------

    @property
    def prompt_frames(self) -> list[int]:
        """Frames whose features :meth:`prepare` needs."""
        return sorted({p.frame_idx for p in self.prompts})

    @property
    def remaining_steps(self) -> list[Step]:
        return self.steps[self.next_step:]

    @property
    def done(self) -> bool:
        return self.next_step >= len(self.steps)

    @property
    def obj_ids(self) -> list[int]:
        return list(self._state["obj_ids"])

    def prepare(self, features: Mapping[int, FrameFeatures]) -> None:
        """Apply the prompts; ``features`` must hold every frame of :attr:`prompt_frames`."""
        if self._prepared:
            raise RuntimeError("prepare() was already called")
        missing = [f for f in self.prompt_frames if f not in features]
        if missing:
            raise ValueError(f"features missing for prompted frames {missing}")
        pred, state = self.predictor, self._state
        with self._compute():
            for f in self.prompt_frames:
                self._inject(f, features[f])
            for p in self.prompts:
                if p.embedding is not None:
                    _add_embedding_prompt(pred, state, p)
                elif p.mask is not None:
                    pred.add_new_mask(state, p.frame_idx, p.obj_id, torch.from_numpy(p.mask))
                else:
                    has_points = len(p.points) > 0
                    pred.add_new_points_or_box(
                        state, p.frame_idx, p.obj_id,
                        points=np.asarray(p.points, np.float32) if has_points else None,
                        labels=np.asarray(p.labels, np.int32) if has_points else None,
                        box=np.asarray(p.box, np.float32) if p.box is not None else None,
                    )
            # Encodes the prompted frames into memory, as the first propagate_in_video call does.
            pred.propagate_in_video_preflight(state)
            state["cached_features"].clear()
        self._prepared = True

    def run_step(self, features: FeaturesArg) -> Iterator[FrameResult]:
        """Process the next step; ``features`` holds every frame of it.

        ``features`` is a mapping ``frame -> FrameFeatures`` or a sequence in ascending frame
        order starting at the step's ``start``. Consume the iterator fully before exporting.
        """
        if self._broken:
            raise RuntimeError("a previous step was abandoned half-way; resume from an export")
        if self._in_step:
            raise RuntimeError("the previous step is still being consumed")
        if not self._prepared:
            raise RuntimeError("call prepare() before run_step()")
        if self.done:
            raise RuntimeError("every step has been run")
        step = self.steps[self.next_step]
        if not isinstance(features, Mapping):
            features = list(features)
            if len(features) != step.stop - step.start:
                raise ValueError(
                    f"step [{step.start}, {step.stop}) needs {step.stop - step.start} frames' "
                    f"features, got {len(features)}"
                )
            features = dict(zip(range(step.start, step.stop), features))
        missing = [f for f in step.frames if f not in features]
        if missing:
            raise ValueError(
                f"features missing for frames {missing} of step [{step.start}, {step.stop})"
            )
        self._in_step = True
        return self._run(step, features)

    def run(self, features_per_step: Iterable[FeaturesArg]) -> Iterator[FrameResult]:
        """Run the remaining steps, taking one item of ``features_per_step`` for each."""
        it = iter(features_per_step)
        while not self.done:
            try:
                features = next(it)
            except StopIteration:
                raise ValueError("features_per_step ended before the last step") from None
            yield from self.run_step(features)

    def export_state(self) -> bytes:
        """The tracking state at the current step boundary, as ``torch.save`` bytes."""
        if self._broken or self._in_step or not self._prepared:
            raise RuntimeError("the state can only be exported between two complete steps")
        state = self._state
        outputs = {}
        for obj_idx, out in state["output_dict_per_obj"].items():
            outputs[obj_idx] = {
                kind: {f: _export_record(rec) for f, rec in out[kind].items()}
                for kind in ("cond_frame_outputs", "non_cond_frame_outputs")
            }
        constants = state["constants"].get("maskmem_pos_enc")
        blob = {
            "version": _BLOB_VERSION,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "chunk_size": self.chunk_size,
            "first_prompt_frame": self.first_prompt_frame,
            "steps": [(s.start, s.stop, s.reverse) for s in self.steps],
            "next_step": self.next_step,
            "autocast_dtype": _dtype_name(self.autocast_dtype),
            "obj_ids": list(state["obj_ids"]),
            "outputs": outputs,
            "maskmem_pos_enc": [t.to("cpu", copy=True) for t in constants] if constants else None,
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        return buf.getvalue()

    @classmethod
    def from_state(cls, predictor, blob: bytes) -> "Sam2VideoPropagator":
        """A propagator that continues where the one that exported ``blob`` stopped.

        ``predictor`` must be built from the same checkpoint (and run with the same thread count
        for bitwise equal results).
        """
        try:
            data = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types on bad bytes
            raise ValueError(f"not a SAM 2 propagator state: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != _BLOB_VERSION:
            raise ValueError("not a SAM 2 propagator state of a supported version")
        self = cls.__new__(cls)
        self.prompts = ()
        self._setup(
            predictor, data["num_frames"], data["height"], data["width"],
            data["first_prompt_frame"], data["chunk_size"], [Step(*s) for s in data["steps"]],
            data["next_step"], _AUTOCAST_DTYPES.get(data["autocast_dtype"]),
        )
        self._prepared = True

        state, device = self._state, predictor.device
        pos_enc = None
        if data["maskmem_pos_enc"] is not None:
            pos_enc = [t.to(device) for t in data["maskmem_pos_enc"]]
            state["constants"]["maskmem_pos_enc"] = pos_enc
        for obj_id in data["obj_ids"]:
            predictor._obj_id_to_idx(state, obj_id)
        for obj_idx, out in data["outputs"].items():
            for kind, records in out.items():
                state["output_dict_per_obj"][obj_idx][kind] = {
                    f: _import_record(rec, device, pos_enc) for f, rec in records.items()
                }
        return self

    # -- internals ----------------------------------------------------------------------------

    def _compute(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(_autocast(self.predictor.device, self.autocast_dtype))
        return stack

    def _inject(self, frame_idx: int, features: FrameFeatures) -> None:
        pred = self.predictor
        device = pred.device
        fpn = [t.to(device) for t in features]
        if len(fpn) != pred.num_feature_levels or any(t.dim() != 4 or t.shape[0] != 1 for t in fpn):
            raise ValueError(
                f"features of frame {frame_idx} must be {pred.num_feature_levels} tensors of "
                f"shape (1, C, h, w), got {[tuple(t.shape) for t in fpn]}"
            )
        if self._pos_enc is None:
            # Shape-only sine encoding: computed once, shared by every frame (models.md 1.8).
            encode = pred.image_encoder.neck.position_encoding
            self._pos_enc = [encode(t).to(t.dtype) for t in fpn]
        # The image slot is never read by the video predictor; a tiny dummy stands in.
        dummy = torch.zeros(1, 3, 1, 1, device=device)
        self._state["cached_features"][frame_idx] = (
            dummy, {"backbone_fpn": fpn, "vision_pos_enc": self._pos_enc}
        )

    def _run(self, step: Step, features: Mapping[int, FrameFeatures]) -> Iterator[FrameResult]:
        finished = False
        try:
            for t in step.frames:
                with self._compute():
                    self._inject(t, features[t])
                    try:
                        logits = self._track_frame(t, step.reverse)
                    finally:
                        self._state["cached_features"].pop(t, None)
                    self._trim(t, step.reverse)
                # The forward result of the first prompted frame is superseded by the backward one.
                if step.reverse or t != self.first_prompt_frame or self.first_prompt_frame == 0:
                    yield FrameResult(t, list(self._state["obj_ids"]), logits)
            finished = True
        finally:
            self._in_step = False
            if finished:
                self.next_step += 1
            else:
                self._broken = True

    def _track_frame(self, t: int, reverse: bool) -> torch.Tensor:
        # The per-frame body of SAM2VideoPredictor.propagate_in_video: objects run one by one.
        pred, state = self.predictor, self._state
        per_obj = []
        for obj_idx in range(len(state["obj_ids"])):
            out = state["output_dict_per_obj"][obj_idx]
            cond = out["cond_frame_outputs"].get(t)
            if cond is not None:
                per_obj.append(cond["pred_masks"].to(state["device"]))
                continue
            record, masks = pred._run_single_frame_inference(
                inference_state=state,
                output_dict=out,
                frame_idx=t,
                batch_size=1,
                is_init_cond_frame=False,
                point_inputs=None,
                mask_inputs=None,
                reverse=reverse,
                run_mem_encoder=True,
            )
            # Later frames read only memories and pointers of tracked frames, never their masks.
            record["pred_masks"] = None
            out["non_cond_frame_outputs"][t] = record
            per_obj.append(masks)
        _, video_res = pred._get_orig_video_res_output(state, torch.cat(per_obj, dim=0))
        return video_res[:, 0].float().to("cpu")

    def _trim(self, t: int, reverse: bool) -> None:
        w, s = self._window, self.first_prompt_frame
        backward_pending = not reverse and s > 0
        for out in self._state["output_dict_per_obj"].values():
            records = out["non_cond_frame_outputs"]
            for f in list(records):
                if reverse:
                    stale = f > t + w
                else:
                    # The backward pass starts at s and reads the forward records just after it.
                    stale = f < t - w and not (backward_pending and s <= f <= s + w)
                if stale:
                    del records[f]


def _check_predictor(predictor) -> None:
    if not hasattr(predictor, "_run_single_frame_inference"):
        raise TypeError("expected a sam2 SAM2VideoPredictor (see load_sam2_video_predictor)")
    if predictor.clear_non_cond_mem_around_input:
        raise NotImplementedError("clear_non_cond_mem_around_input=True is not supported")
    if predictor.training:
        raise ValueError("the predictor must be in eval mode")


def _check_prompts(
    prompts: Sequence[ObjectPrompt], num_frames: int, height: int, width: int
) -> tuple[ObjectPrompt, ...]:
    if not prompts:
        raise ValueError("at least one prompt is required")
    seen: set[tuple[int, int]] = set()
    checked = []
    for p in prompts:
        if isinstance(p.obj_id, bool) or not isinstance(p.obj_id, (int, np.integer)):
            raise ValueError(f"obj_id must be an int, got {p.obj_id!r}")
        if isinstance(p.frame_idx, bool) or not isinstance(p.frame_idx, (int, np.integer)):
            raise ValueError(f"frame_idx must be an int, got {p.frame_idx!r}")
        if not 0 <= p.frame_idx < num_frames:
            raise ValueError(f"frame_idx {p.frame_idx} is outside the video's [0, {num_frames})")
        key = (int(p.obj_id), int(p.frame_idx))
        if key in seen:
            raise ValueError(f"object {key[0]} has two prompts on frame {key[1]}; merge them")
        seen.add(key)
        where = f"object {key[0]} frame {key[1]}"
        pts = np.asarray(p.points, np.float32)
        if pts.size == 0:
            pts = pts.reshape(0, 2)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"{where}: points are (x, y) pairs, got shape {pts.shape}")
        lbl = np.asarray(p.labels, np.int64).reshape(-1)
        if len(lbl) != len(pts):
            raise ValueError(f"{where}: {len(pts)} points but {len(lbl)} labels")
        if not np.isin(lbl, (0, 1)).all():
            raise ValueError("point labels must be 1 (foreground) or 0 (background)")
        box = None
        if p.box is not None:
            b = np.asarray(p.box, np.float32).reshape(-1)
            if b.shape != (4,):
                raise ValueError(f"a box is (x_min, y_min, x_max, y_max), got {p.box!r}")
            box = (*np.minimum(b[:2], b[2:]).tolist(), *np.maximum(b[:2], b[2:]).tolist())
        if not (np.isfinite(pts).all() and (box is None or np.isfinite(box).all())):
            raise ValueError("point and box coordinates must be finite numbers")
        embedding = None
        if p.embedding is not None:
            if len(pts) or box is not None or p.mask is not None:
                raise ValueError(f"{where}: give an embedding or points/box/mask, not both")
            embedding = np.asarray(p.embedding, np.float32)
            if embedding.ndim != 1 or not np.isfinite(embedding).all():
                raise ValueError(f"{where}: the embedding must be a finite 1-D vector, got shape {embedding.shape}")
        mask = None
        if p.mask is not None:
            if len(pts) or box is not None:
                raise ValueError(f"{where}: give a mask or points/box, not both")
            mask = np.asarray(p.mask).astype(bool)
            if mask.shape != (height, width):
                raise ValueError(f"a mask prompt must be ({height}, {width}), got {mask.shape}")
        elif not len(pts) and box is None and embedding is None:
            raise ValueError(f"{where}: the prompt has no point, box, mask or embedding")
        checked.append(ObjectPrompt(
            key[0], key[1], [tuple(x) for x in pts.tolist()], lbl.tolist(), box, mask, embedding,
        ))
    return tuple(checked)


def _add_embedding_prompt(predictor, state: dict, prompt: ObjectPrompt) -> None:
    """``add_new_points_or_box`` for an embedding prompt: sparse = [no-point, pad, embedding]."""
    obj_idx = predictor._obj_id_to_idx(state, prompt.obj_id)
    width = predictor.sam_prompt_embed_dim
    if prompt.embedding.shape != (width,):
        raise ValueError(f"object {prompt.obj_id}: the embedding must have {width} values, got {prompt.embedding.shape}")
    extra = torch.from_numpy(prompt.embedding).to(predictor.device).reshape(1, 1, width)

    def append(_module, _args, output):
        sparse, dense = output
        return torch.cat([sparse, extra.to(sparse.dtype)], dim=1), dense

    hook = predictor.sam_prompt_encoder.register_forward_hook(append)
    try:
        out, _ = predictor._run_single_frame_inference(
            inference_state=state, output_dict=state["output_dict_per_obj"][obj_idx],
            frame_idx=prompt.frame_idx, batch_size=1, is_init_cond_frame=True, point_inputs=None,
            mask_inputs=None, reverse=False, run_mem_encoder=False,
        )
    finally:
        hook.remove()
    state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"][prompt.frame_idx] = out


def _export_record(rec: dict) -> dict:
    # maskmem_pos_enc is the same for every frame and travels once, as a constant.
    return {
        k: (None if rec[k] is None else rec[k].to("cpu", copy=True))
        for k in ("maskmem_features", "pred_masks", "obj_ptr", "object_score_logits")
    }


def _import_record(rec: dict, device, pos_enc) -> dict:
    out = {k: (None if v is None else v.to(device)) for k, v in rec.items()}
    out["maskmem_pos_enc"] = None if out["maskmem_features"] is None else pos_enc
    return out


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")
