"""Frame features for a propagator, range by range, encoded ahead on encoder replicas.

Ranges are requested in the order the propagator consumes them; at most `window` are in flight or
waiting, so features never pile up for a long video. With `by_reference` handle calls the features
travel through Ray's object store, not through the replica-to-replica RPC channel.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Sequence

from models.sam2_video import FrameFeatures

EncodeCall = Callable[[int, int], Any]  # (start, stop) -> a pending result with .result()


class RangeFeatures:
    def __init__(self, encode: EncodeCall, ranges: Sequence[tuple[int, int]], window: int):
        if window < 1:
            raise ValueError("the prefetch window needs at least one range")
        self._encode = encode
        self._todo = deque(ranges)
        self._pending: deque = deque()
        self._window = window

    def _fill(self) -> None:
        while self._todo and len(self._pending) < self._window:
            start, stop = self._todo.popleft()
            self._pending.append(self._encode(start, stop))

    def next(self) -> list[FrameFeatures]:
        """The next range's features, in request order; starts encoding the ranges after it."""
        self._fill()
        if not self._pending:
            raise StopIteration
        call = self._pending.popleft()
        self._fill()  # keep the encoders busy while this range propagates
        return call.result()

    def cancel(self) -> None:
        for call in self._pending:
            cancel = getattr(call, "cancel", None)
            if cancel is not None:
                cancel()
        self._pending.clear()
        self._todo.clear()


class LocalCall:
    """An already-computed result, for encoding in the propagator's own process."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value
