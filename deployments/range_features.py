"""Frame features for a propagator, range by range, encoded ahead on encoder replicas.

Ranges are requested in the order the propagator consumes them; at most `window` are in flight or
waiting, so features never pile up for a long video. With `by_reference` handle calls the features
travel through the Ray object store, not through the replica-to-replica RPC channel. Frames whose
features are already at hand (the prompt frames, encoded first) are not encoded again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable, Mapping, Sequence

from models.sam2_video import FrameFeatures

EncodeCall = Callable[[int, int], Any]  # (start, stop) -> a pending result with .result()


class RangeFeatures:
    def __init__(self, encode: EncodeCall, ranges: Sequence[tuple[int, int]], window: int,
                 known: Mapping[int, FrameFeatures] | None = None):
        if window < 1:
            raise ValueError("the prefetch window needs at least one range")
        self._encode = encode
        self._todo = deque(ranges)
        self._pending: deque = deque()
        self._window = window
        self._known = dict(known or {})

    def _fill(self) -> None:
        while self._todo and len(self._pending) < self._window:
            start, stop = self._todo.popleft()
            # The frames at the start of the range that are already encoded are handed on as they are.
            head = []
            while start + len(head) < stop and start + len(head) in self._known:
                head.append(self._known.pop(start + len(head)))
            rest = self._encode(start + len(head), stop) if start + len(head) < stop else LocalCall([])
            self._pending.append((head, rest))

    def next(self) -> list[FrameFeatures]:
        """The next range's features, in request order; starts encoding the ranges after it."""
        self._fill()
        if not self._pending:
            raise StopIteration
        head, call = self._pending.popleft()
        self._fill()  # keep the encoders busy while this range propagates
        return head + list(call.result())

    def cancel(self) -> None:
        for _, call in self._pending:
            cancel = getattr(call, "cancel", None)
            if cancel is not None:
                cancel()
        self._pending.clear()
        self._todo.clear()
        self._known.clear()


class LocalCall:
    """An already-computed result, for encoding in the propagator's own process."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


def remote_encoder(worker, video: list, loop: asyncio.AbstractEventLoop,
                   frame_indices: Sequence[int] | None = None) -> EncodeCall:
    """(start, stop) -> pending features of those frames from an encoder worker deployment.

    `video` is `[ObjectRef of the video bytes]`; `frame_indices` maps positions to the source frames
    of a sampled video. Callable from predict()'s worker thread.
    """

    async def call(start: int, stop: int):
        # By reference: features come through the object store, not the replica RPC channel.
        kwargs = {} if frame_indices is None else {"frame_indices": list(frame_indices[start:stop])}
        return await worker.options(_by_reference=True).encode_range.remote(video, start, stop, **kwargs)

    # Serve handles must be used from the replica's event loop, not from predict()'s thread.
    return lambda start, stop: asyncio.run_coroutine_threadsafe(call(start, stop), loop)


def encoder_worker_name(model: dict, workers: Mapping[str, Any]) -> str | None:
    """The `encoder` setting of a video endpoint, checked against its configured workers."""
    name = model.get("encoder")
    if name and name not in workers:
        raise ValueError(f"encoder worker {name!r} is not configured for this endpoint")
    return name
