"""The range loop both video deployments run: features in, masks out, a checkpoint after each range.

A `Sam2VideoPropagator` consumes the ranges' features (encoded ahead by `RangeFeatures`) in order;
after each range its masks and the state to resume from go to a `RangeCheckpoint`, and the status
log gets the range's timing. What a frame's result becomes is the caller's (`on_result`).
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from deployments.base import RunContext
from deployments.range_checkpoint import RangeCheckpoint
from deployments.range_features import EncodeCall, RangeFeatures
from models.sam2_video import FrameFeatures, FrameResult, Sam2VideoPropagator
from models.video_masks import FrameMasks


def track_ranges(prop: Sam2VideoPropagator, encode: EncodeCall, prefetch: int, checkpoint: RangeCheckpoint,
                 masks: FrameMasks, ctx: RunContext, on_result: Callable[[FrameResult], None],
                 state: Callable[[Sam2VideoPropagator], bytes],
                 known: Mapping[int, FrameFeatures] | None = None) -> None:
    """Run `prop`'s remaining ranges; `on_result` files each frame into `masks`; `state(prop)` is
    what the checkpoint keeps to resume from; `known` features are not encoded again."""
    steps = list(prop.remaining_steps)
    total = ctx.scratch["ranges"] = len(prop.steps)
    source = RangeFeatures(encode, [(s.start, s.stop) for s in steps], prefetch, known)
    try:
        for step in steps:
            ctx.cancel.check()
            started = time.perf_counter()
            features = source.next()
            waited = time.perf_counter() - started
            for result in prop.run_step(features):
                on_result(result)
            checkpoint.save(prop.next_step, state(prop), masks.to_json(step.frames))
            direction = "backward" if step.reverse else "forward"
            ctx.log(f"range {prop.next_step}/{total}: frames {step.start}-{step.stop - 1} {direction} in "
                    f"{time.perf_counter() - started:.2f} s ({waited:.2f} s waiting for features)")
    finally:
        source.cancel()
