"""A queued request's record and its fal status view.

Only three statuses exist on the wire (IN_QUEUE, IN_PROGRESS, COMPLETED); a failure or a cancel is
COMPLETED with `error`/`error_type`, and its result endpoint returns the error status and body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


@dataclass
class JobRecord:
    request_id: str
    seq: int
    endpoint_id: str
    queue_base: str
    deployment: str
    payload: dict
    base_url: str
    webhook_url: str | None = None
    status: Status = "IN_QUEUE"
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    start_deadline: float | None = None
    result_status: int | None = None
    result_body: Any = None
    result_headers: dict[str, str] = field(default_factory=dict)
    webhook_state: str | None = None  # None (no webhook), "pending", "delivered", "failed"
    dispatch_count: int = 0
    logs: list[dict] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == "COMPLETED" and self.result_status is not None and self.result_status < 400

    def status_view(self, with_logs: bool, queue_position: int | None = None, log_offset: int = 0) -> dict:
        """The status object without the URLs (the gateway adds those from the caller's origin)."""
        view: dict[str, Any] = {"status": self.status, "request_id": self.request_id}
        if self.status == "IN_QUEUE":
            view["queue_position"] = queue_position or 0
            return view
        view["logs"] = self.logs[log_offset:] if with_logs else None
        if self.status == "COMPLETED":
            if self.started_at is not None and self.completed_at is not None:
                view["metrics"] = {"inference_time": round(self.completed_at - self.started_at, 6)}
            else:
                view["metrics"] = {}
            if not self.succeeded:
                view["error"] = error_message(self.result_body, self.result_status)
                view["error_type"] = error_type(self.result_body, self.result_status)
        return view


def error_message(body: Any, status_code: int | None) -> str:
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            loc = ".".join(str(p) for p in first.get("loc", []) if p != "body")
            msg = str(first.get("msg", ""))
            return f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg
    return f"Request failed with HTTP {status_code}"


def error_type(body: Any, status_code: int | None) -> str:
    if isinstance(body, dict) and isinstance(body.get("error_type"), str):
        return body["error_type"]
    if status_code == 422:
        return "validation_error"
    if status_code is not None and 400 <= status_code < 500:
        return "bad_request"
    return "internal_error"
