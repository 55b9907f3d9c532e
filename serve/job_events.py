"""The events a model deployment yields while it runs a job, and the job context it receives.

A deployment's streaming method yields plain dicts (they cross Ray's object store):
`started` once the replica picks the job up, `log` lines and `data` partial results as it goes,
then exactly one `result`
(with an HTTP status code and a JSON body: the model output, or a fal-style error body).
The job queue, the sync run and the streaming run all consume this one stream.
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

LogLevel = Literal["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def started() -> dict:
    return {"type": "started"}


def log(message: str, level: LogLevel = "INFO") -> dict:
    return {"type": "log", "log": {"message": message, "level": level, "source": "USER", "timestamp": now_iso()}}


def data(payload: dict) -> dict:
    """A partial result (e.g. one video frame's masks): sent on the streaming run as it is made."""
    return {"type": "data", "data": payload}


def result(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> dict:
    return {"type": "result", "status_code": status_code, "body": body, "headers": headers or {}}


def error_body(detail: Any, error_type: str | None = None) -> dict:
    body: dict[str, Any] = {"detail": detail}
    if error_type:
        body["error_type"] = error_type
    return body


def field_error(field_path: list[str | int], message: str, error_type: str = "value_error", status_code: int = 422) -> dict:
    """A result event carrying a FastAPI-shaped validation error that names the field."""
    return result({"detail": [{"loc": ["body", *field_path], "msg": message, "type": error_type}]}, status_code)


def infrastructure_error(status_code: int, detail: str, error_type: str) -> dict:
    return result(error_body(detail, error_type), status_code, {"X-Fal-Error-Type": error_type})


@dataclass
class JobContext:
    """What a deployment knows about the request it serves (plain data: it crosses Ray)."""

    request_id: str
    base_url: str = ""
    endpoint_id: str = ""

    def to_dict(self) -> dict:
        return {"request_id": self.request_id, "base_url": self.base_url, "endpoint_id": self.endpoint_id}


@dataclass
class CancelFlag:
    """Cooperative cancellation, checked by model code at its checkpoints (per frame, per step)."""

    _event: threading.Event = field(default_factory=threading.Event)

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise JobCancelled()


class JobCancelled(Exception):
    """Raised at a checkpoint of a job whose cancellation was requested."""
