"""`fal-ai/sa2va/{8b,4b}/video`: Sa2VA's answer about a video, with one mask video per [SEG].

Frames are sampled evenly (`num_frames_to_sample`, all by default); the first 5 sampled frames go
to the language model, as the reference does. Each [SEG] prompts SAM 2 on those key frames, and the
masks are tracked through every sampled frame with the chunked SAM 2 video pipeline (DESIGN.md):
frame ranges are encoded ahead on the encoder worker deployment (several replicas in parallel, a
bounded window ahead) and consumed in order by this deployment's propagator. Masks are resized to
the video's size and written as one H.264 mask video per [SEG]. After each range the answer, the
[SEG] prompts, SAM 2's tracking state and the range's masks go to storage, so a job re-dispatched
after its replica died resumes after the last finished range, as `fal-ai/sam2/video` does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from fractions import Fraction

import msgpack
import torch


from deployments.base import RequestError, RunContext
from deployments.video_limits import VideoLimits
from deployments.range_checkpoint import RangeCheckpoint, input_fingerprint
from deployments.range_features import LocalCall, encoder_worker_name, remote_encoder
from deployments.range_tracking import track_ranges
from deployments.sa2va_answer import Sa2vaAnswerer, clean_answer
from deployments.sa2va_schema import Sa2vaVideoInput
from models.sa2va import Prompt, to_video_size
from models.sam2_video import Sam2VideoPropagator
from models.sa2va_inputs import sample_frame_indices
from models.video_io import VideoDecodeError, VideoInfo, read_frames_at
from models.video_masks import FrameMasks
from models.video_render import render_range
from serve.output_files import save_output


@dataclass
class VideoJob:
    data: bytes
    info: VideoInfo
    indices: list[int]  # the sampled source frames; SAM 2 sees them as frames 0..n-1
    prompt: Prompt
    fingerprint: str
    shared: list | None = field(default=None, repr=False)

    def shared_video(self) -> list:
        if self.shared is None:
            import ray

            self.shared = [ray.put(self.data)]
        return self.shared


@dataclass
class VideoAnswer:
    text: str
    masks: FrameMasks  # object s = the s-th [SEG], frames 0..n-1 (the sampled frames)
    n_seg: int


class Sa2vaVideo(Sa2vaAnswerer):
    input_model = Sa2vaVideoInput

    def setup(self, model: dict) -> None:
        super().setup(model)
        self.prefetch = int(model.get("prefetch", 2))
        self.encoder_name = encoder_worker_name(model, self.workers)
        self.limits = VideoLimits.from_settings(model)

    async def decode(self, request: Sa2vaVideoInput, ctx: RunContext) -> VideoJob:
        data, _ = await self.read_input_file("video_url", request.video_url, ctx)
        info = await self.limits.probe(data, "video_url")
        indices = sample_frame_indices(info.num_frames, request.num_frames_to_sample)
        try:
            key_frames = await asyncio.to_thread(read_frames_at, data, indices[:5])
        except VideoDecodeError as exc:
            raise RequestError(["video_url"], str(exc)) from None
        prompt = await asyncio.to_thread(self.prepare_prompt, request.prompt, None, list(key_frames))
        ctx.log(f"video: {info.num_frames} frames, {info.width}x{info.height} at {float(info.fps):.3g} fps; "
                f"{len(indices)} sampled, {prompt.num_key_frames} to the language model "
                f"({len(prompt.input_ids)} prompt tokens)")
        ctx.scratch["loop"] = asyncio.get_running_loop()  # predict() runs in a thread; handles live on this loop
        # The mask videos have one frame per sampled frame and last as long as the input.
        ctx.scratch["fps"] = info.fps * Fraction(len(indices), info.num_frames)
        fingerprint = await asyncio.to_thread(input_fingerprint, data, request)  # hashing a long video takes a while
        ctx.scratch["job"] = job = VideoJob(data, info, indices, prompt, fingerprint)
        return job

    def predict(self, job: VideoJob, ctx: RunContext) -> VideoAnswer:
        info = job.info
        checkpoint = self._checkpoint(job, ctx)
        saved = checkpoint.load()
        masks = FrameMasks(info.height, info.width)  # object s = the s-th [SEG]
        if saved is not None:
            state, ranges = saved
            text, seg, blob = _unpack_state(state)
            prop = Sam2VideoPropagator.from_state(self.sa2va.predictor, blob)
            for range_masks in ranges:
                masks.add_json(range_masks)
            ctx.log(f"resuming from the checkpoint after range {prop.next_step}/{len(prop.steps)}")
        else:
            generation = self.answer(job.prompt, ctx)
            text = clean_answer(generation.text, self.sa2va.stop_words)
            if generation.seg_hidden.shape[0] == 0:
                return VideoAnswer(text, masks, 0)
            seg = self.sa2va.seg_embeddings(generation)
            prop = self.sa2va.propagator(seg, len(job.indices), job.prompt.num_key_frames, self.chunk_size)
        n_seg = seg.shape[0]
        encode = self._encoder(job, ctx.scratch["loop"])
        known = {}
        if saved is None:
            keys = prop.prompt_frames  # the key frames 0..K-1
            known = dict(zip(keys, encode(keys[0], keys[-1] + 1).result()))
            prop.prepare(known)

        def on_result(result) -> None:
            small = to_video_size(result.mask_logits, info.height, info.width) > 0
            masks.add(result.frame_idx, list(range(n_seg)), small.numpy())

        track_ranges(prop, encode, self.prefetch, checkpoint, masks, ctx, on_result,
                     lambda p: _pack_state(text, seg, p.export_state()), known)
        return VideoAnswer(text, masks, n_seg)

    def _checkpoint(self, job: VideoJob, ctx: RunContext) -> RangeCheckpoint:
        return RangeCheckpoint(self.platform.storage, ctx.job.request_id, job.fingerprint)

    def _encoder(self, job: VideoJob, loop: asyncio.AbstractEventLoop):
        """(start, stop) over sampled frames -> pending SAM 2 features: on the workers, or here."""
        if not self.encoder_name:
            return lambda start, stop: LocalCall(self.sa2va.encode_frames(read_frames_at(job.data, job.indices[start:stop])))
        return remote_encoder(self.workers[self.encoder_name], job.shared_video(), loop, job.indices)

    async def encode(self, answer: VideoAnswer, request: Sa2vaVideoInput, ctx: RunContext) -> dict:
        files = []
        for s in range(answer.n_seg):
            single = await asyncio.to_thread(answer.masks.only, s)
            rendered = await asyncio.to_thread(render_range, None, 0, len(single), single, ctx.scratch["fps"], False,
                                               False, ctx.cancel.check)
            files.append(await save_output(self.platform.storage, rendered.video, "video/mp4", f"mask_{s}.mp4",
                                           ctx.job.base_url))
        if "ranges" in ctx.scratch:
            await asyncio.to_thread(self._checkpoint(ctx.scratch["job"], ctx).clear, ctx.scratch["ranges"])
        return {"output": answer.text, "masks": files}


def _pack_state(text: str, seg: torch.Tensor, propagator_state: bytes) -> bytes:
    """What a re-dispatched job needs besides the masks: the answer, its [SEG] prompts, SAM 2's state."""
    seg = seg.detach().float().cpu().contiguous()
    return msgpack.packb({"text": text, "seg": seg.numpy().tobytes(), "seg_shape": list(seg.shape),
                          "propagator": propagator_state})


def _unpack_state(state: bytes) -> tuple[str, torch.Tensor, bytes]:
    record = msgpack.unpackb(state)
    seg = torch.frombuffer(bytearray(record["seg"]), dtype=torch.float32).reshape(record["seg_shape"])
    return record["text"], seg, record["propagator"]
