"""fal's queue API: submit, status (polling and SSE), result and cancel, served from the queue actor."""
# No `from __future__ import annotations`: FastAPI must see the per-endpoint body classes themselves.

import uuid
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from serve.gateway.errors import error_response
from serve.gateway.run_routes import ERROR_RESPONSES, sse
from serve.gateway.security import require_key
from serve.gateway.services import GatewayServices, services
from serve.registry import Endpoint

KEEPALIVE_S = 15.0


class QueueUrls(BaseModel):
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str


class SubmitResponse(QueueUrls):
    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    gateway_request_id: str
    queue_position: int = 0


class LogEntry(BaseModel):
    message: str
    level: str
    source: str = "USER"
    timestamp: str


class StatusResponse(QueueUrls):
    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    queue_position: int | None = Field(None, description="Only while IN_QUEUE.")
    logs: list[LogEntry] | None = Field(None, description="Present (maybe null) once IN_PROGRESS.")
    metrics: dict | None = None
    error: str | None = None
    error_type: str | None = None


class CancelResponse(BaseModel):
    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]


def urls(base_url: str, queue_base: str, request_id: str) -> dict:
    root = f"{base_url}/queue/{queue_base}/requests/{request_id}"
    return {"request_id": request_id, "response_url": root, "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel"}


def parse_logs_flag(value: str | None) -> bool:
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false", ""):
        return False
    raise HTTPException(422, detail=[{"loc": ["query", "logs"], "msg": "logs must be 1, 0, true or false",
                                      "type": "value_error", "input": value}])


def check_webhook_url(url: str) -> None:
    """Shape only: the SSRF guard judges the target (after DNS resolution) at each delivery."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HTTPException(422, detail=[{"loc": ["query", "fal_webhook"], "type": "value_error",
                                          "msg": "fal_webhook must be an absolute http(s) URL"}])


def start_timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if seconds <= 1:
        raise HTTPException(422, detail=[{"loc": ["header", "x-fal-request-timeout"],
                                          "msg": "must be a number of seconds greater than 1", "type": "value_error"}])
    return seconds


def submit_router(endpoint: Endpoint) -> APIRouter:
    router = APIRouter(tags=[endpoint.id], responses=ERROR_RESPONSES)
    Input = endpoint.input_model

    async def submit(request: Request, body: Input,
                     fal_webhook: str | None = Query(None, description="URL to POST the result to when done."),
                     x_fal_request_timeout: str | None = Header(None, description="Start deadline in seconds."),
                     svc: GatewayServices = Depends(services)):
        if fal_webhook:
            check_webhook_url(fal_webhook)
        request_id = str(uuid.uuid4())
        base_url = svc.base_url(request)
        view = await svc.queue.submit.remote({
            "request_id": request_id, "endpoint_id": endpoint.id, "queue_base": endpoint.queue_base,
            "deployment": endpoint.deployment_name, "payload": body.model_dump(mode="json"),
            "base_url": base_url, "webhook_url": fal_webhook,
            "start_timeout_s": start_timeout(x_fal_request_timeout),
        })
        content = {"status": view["status"], "request_id": request_id, "gateway_request_id": request_id,
                   **urls(base_url, endpoint.queue_base, request_id),
                   "queue_position": view.get("queue_position", 0)}
        return JSONResponse(content, headers={"x-fal-request-id": request_id})

    router.add_api_route(f"/queue/{endpoint.id}", submit, methods=["POST"], response_model=SubmitResponse,
                         summary=f"Queue a {endpoint.id} request", dependencies=[Depends(require_key)])
    return router


def requests_router() -> APIRouter:
    router = APIRouter(tags=["queue"], dependencies=[Depends(require_key)], responses={
        401: {"description": "Missing or invalid API key."}, 404: {"description": "Unknown request id."}})
    not_found = {"detail": "Request not found"}

    @router.get("/queue/{queue_base:path}/requests/{request_id}/status", response_model=StatusResponse,
                summary="Status of a queued request")
    async def status(request: Request, queue_base: str, request_id: str,
                     logs: str | None = Query(None, description="1|true to include logs, 0|false not to."),
                     svc: GatewayServices = Depends(services)):
        with_logs = parse_logs_flag(logs)
        view = svc.finished.status(request_id, queue_base, with_logs)
        if view is None:
            # Fetch finished jobs with their logs so the cached view serves both flag spellings.
            view = await svc.queue.status.remote(request_id, queue_base, True)
            if view is None:
                return JSONResponse(not_found, status_code=404)
            svc.finished.remember_status(request_id, queue_base, view, True)
            if not with_logs and "logs" in view:
                view = {**view, "logs": None}
        return JSONResponse({**view, **urls(svc.base_url(request), queue_base, request_id)},
                            headers={"x-fal-request-id": request_id})

    @router.get("/queue/{queue_base:path}/requests/{request_id}/status/stream", summary="Status as server-sent events",
                response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {}},
                                 "description": "One `data:` status per change, new logs only; partial results "
                                                "(e.g. per-frame video masks) as IN_PROGRESS events with `data`; "
                                                "ends after COMPLETED."}})
    async def status_stream(request: Request, queue_base: str, request_id: str,
                            logs: str | None = Query(None, description="1|true to include logs."),
                            svc: GatewayServices = Depends(services)):
        with_logs = parse_logs_flag(logs)
        first = await svc.queue.watch.remote(request_id, queue_base, -1, 0, 0.0)
        if first is None:
            return JSONResponse(not_found, status_code=404)
        links = urls(svc.base_url(request), queue_base, request_id)

        async def events():
            update, sent_logs, sent_status = first, 0, None
            while True:
                view = dict(update["status"])
                new_logs = update["log_count"] > sent_logs
                if view.get("logs") is not None:
                    view["logs"] = view["logs"] if with_logs else None
                sent_logs = update["log_count"]
                # Partial results come first: they were made before the status that follows them.
                for data in update["data"]:
                    yield sse({"status": "IN_PROGRESS", "request_id": request_id, "data": data, **links})
                if view["status"] != sent_status or (new_logs and with_logs) or view["status"] == "COMPLETED":
                    sent_status = view["status"]
                    yield sse({**view, **links})
                if view["status"] == "COMPLETED":
                    return
                version, data_count = update["version"], update["data_count"]
                while True:
                    update = await svc.queue.watch.remote(request_id, queue_base, version, sent_logs, KEEPALIVE_S,
                                                          data_count)
                    if update is None:
                        return
                    if update["version"] != version or update["status"]["status"] == "COMPLETED":
                        break
                    yield b": keepalive\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"x-fal-request-id": request_id, "Cache-Control": "no-store"})

    @router.get("/queue/{queue_base:path}/requests/{request_id}", summary="Result of a queued request",
                responses={200: {"description": "The model output, exactly as the sync run returns it."},
                           400: {"description": "Not finished yet."}})
    async def result(queue_base: str, request_id: str, svc: GatewayServices = Depends(services)):
        outcome = svc.finished.result(request_id, queue_base)
        if outcome is None:
            outcome = await svc.queue.result.remote(request_id, queue_base)
            if outcome is None:
                return JSONResponse(not_found, status_code=404)
            svc.finished.remember_result(request_id, queue_base, outcome)
        if not outcome["ready"]:
            # 400, never 408/409/429/5xx: those make the clients retry.
            return JSONResponse({"detail": f"Request is still {outcome['status']}"}, status_code=400,
                                headers={"x-fal-request-id": request_id})
        headers = {**outcome["headers"], "x-fal-request-id": request_id}
        return JSONResponse(outcome["body"], status_code=outcome["status_code"], headers=headers)

    @router.put("/queue/{queue_base:path}/requests/{request_id}/cancel", summary="Cancel a queued or running request",
                status_code=202, response_model=CancelResponse,
                responses={400: {"description": "Already completed."}})
    async def cancel(queue_base: str, request_id: str, svc: GatewayServices = Depends(services)):
        outcome = await svc.queue.cancel.remote(request_id, queue_base)
        if outcome is None:
            return JSONResponse(not_found, status_code=404)
        if outcome == "completed":
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)

    @router.post("/queue/{path:path}", include_in_schema=False)
    async def unknown_submit(path: str):
        return error_response(404, f"Unknown endpoint: {path!r}")

    return router
