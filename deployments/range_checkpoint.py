"""A video job's progress in storage, so a re-dispatched job resumes after its last finished range.

Each finished range's masks are written once, under their own key; the tracking state (small, and
replaced at every range) names how many ranges it covers. Nothing is rewritten as the job grows,
and a fingerprint of the inputs keeps a request from resuming from another one's progress.
"""

from __future__ import annotations

import hashlib
import json

import msgpack
from pydantic import BaseModel

from serve.storage import FileNotFound, Storage

VERSION = 2


def input_fingerprint(data: bytes, request: BaseModel, exclude: set[str] = frozenset(), extra: bytes = b"") -> str:
    """Identifies a job's inputs (the media, the request's fields, anything else that shapes the result):
    a checkpoint is resumed only by a job with the same ones."""
    digest = hashlib.sha256(data)
    digest.update(json.dumps(request.model_dump(mode="json", exclude=set(exclude)), sort_keys=True).encode())
    digest.update(extra)
    return digest.hexdigest()


class RangeCheckpoint:
    def __init__(self, storage: Storage, request_id: str, fingerprint: str):
        self.storage = storage
        self.folder = f"checkpoints/{request_id}"
        self.fingerprint = fingerprint

    def _range_key(self, index: int) -> str:
        return f"{self.folder}/range-{index:06d}.json"

    @property
    def _state_key(self) -> str:
        return f"{self.folder}/state.msgpack"

    def save(self, ranges_done: int, state: bytes, range_masks: dict) -> None:
        """Range number `ranges_done` (1-based) has finished with these masks; `state` follows it."""
        self.storage.put(self._range_key(ranges_done - 1), json.dumps(range_masks).encode(), "application/json")
        record = {"version": VERSION, "fingerprint": self.fingerprint, "ranges_done": ranges_done, "state": state}
        self.storage.put(self._state_key, msgpack.packb(record), "application/octet-stream")

    def load(self) -> tuple[bytes, list[dict]] | None:
        """(tracking state, masks of every finished range), or None when there is nothing to resume."""
        try:
            record = msgpack.unpackb(self.storage.get(self._state_key)[0])
            if record.get("version") != VERSION or record.get("fingerprint") != self.fingerprint:
                return None  # another request's inputs: never resume from it
            ranges = [json.loads(self.storage.get(self._range_key(i))[0]) for i in range(record["ranges_done"])]
        except (FileNotFound, ValueError, KeyError, msgpack.UnpackException):
            return None
        return record["state"], ranges

    def clear(self, ranges: int) -> None:
        for key in [self._state_key, *(self._range_key(i) for i in range(ranges))]:
            try:
                self.storage.delete(key)
            except FileNotFound:
                pass
