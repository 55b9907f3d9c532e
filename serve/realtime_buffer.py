"""Newest-input-wins buffering for realtime sessions, as fal's runner does it.

Inputs wait in a bounded buffer; when one arrives and the buffer is full, the oldest waiting input
is dropped, so a client streaming frames faster than the model runs always gets its latest frame
processed next and never builds up lag.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class BufferClosed(Exception):
    """The session ended: no input is coming any more."""


class NewestInputWins:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError("a realtime buffer holds at least one input")
        self._items: deque[Any] = deque(maxlen=size)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1  # deque(maxlen) drops the oldest on append
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self, timeout_s: float) -> Any:
        """The oldest waiting input; `asyncio.TimeoutError` after `timeout_s` idle, `BufferClosed` at the end."""
        while not self._items:
            if self._closed:
                raise BufferClosed()
            self._ready.clear()
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self._items.popleft()
