"""Sync run (`POST /{endpoint_id}`) and streaming run (`POST /{endpoint_id}/stream`, SSE).

Routes are added per registered endpoint with its own pydantic input model, so /docs shows every
endpoint's real schema; a catch-all answers unknown endpoint ids with 404.
"""
# No `from __future__ import annotations`: FastAPI must see the per-endpoint body classes themselves.

import asyncio
import json
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve.gateway.errors import error_response
from serve.gateway.security import require_key, require_key_or_app_token
from serve.gateway.services import GatewayServices, services
from serve.job_events import JobContext
from serve.registry import Endpoint

ERROR_RESPONSES = {
    401: {"description": "Missing or invalid API key."},
    413: {"description": "Request body too large."},
    422: {"description": "Invalid input; `detail` names the field."},
    504: {"description": "The model did not answer in time (`error_type: request_timeout`)."},
}


def result_response(event: dict, request_id: str) -> JSONResponse:
    headers = {**event.get("headers", {}), "x-fal-request-id": request_id}
    return JSONResponse(event["body"], status_code=event["status_code"], headers=headers)


def sse(data: dict) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def endpoint_router(endpoint: Endpoint) -> APIRouter:
    router = APIRouter(tags=[endpoint.id], responses=ERROR_RESPONSES)
    Input = endpoint.input_model

    async def run(request: Request, body: Input, svc: GatewayServices = Depends(services)):
        request_id = str(uuid.uuid4())
        ctx = JobContext(request_id, svc.base_url(request), endpoint.id).to_dict()
        call = svc.handle(endpoint.deployment_name).run.remote(body.model_dump(mode="json"), ctx)
        try:
            event = await asyncio.wait_for(call, timeout=svc.config.limits.sync_timeout_s)
        except asyncio.TimeoutError:
            call.cancel()
            # 504, never 408: the Python client re-sends inference on 408.
            return error_response(504, "Request timed out", "request_timeout",
                                  {"x-fal-request-id": request_id})
        except Exception as exc:  # the model deployment could not be reached or died mid-request
            return error_response(503, f"Model deployment failed: {type(exc).__name__}", "runner_connection_error",
                                  {"x-fal-request-id": request_id})
        return result_response(event, request_id)

    async def stream(request: Request, body: Input, svc: GatewayServices = Depends(services)):
        request_id = str(uuid.uuid4())
        ctx = JobContext(request_id, svc.base_url(request), endpoint.id).to_dict()
        events = svc.handle(endpoint.deployment_name).options(stream=True).run_job.remote(
            body.model_dump(mode="json"), ctx)

        async def body_iter():
            try:
                async for event in events:
                    if event["type"] == "log":
                        yield sse({"status": "IN_PROGRESS", "request_id": request_id, "logs": [event["log"]]})
                    elif event["type"] == "data":
                        yield sse({"status": "IN_PROGRESS", "request_id": request_id, "data": event["data"]})
                    elif event["type"] == "result":
                        yield sse(event["body"])
                        return
            finally:
                events.cancel()

        return StreamingResponse(body_iter(), media_type="text/event-stream",
                                 headers={"x-fal-request-id": request_id, "Cache-Control": "no-store"})

    alias = endpoint.parsed.alias
    router.add_api_route(f"/{endpoint.id}", run, methods=["POST"], response_model=endpoint.output_model,
                         summary=f"Run {endpoint.id} and wait for the result", dependencies=[Depends(require_key)])
    router.add_api_route(f"/{endpoint.id}/stream", stream, methods=["POST"],
                         summary=f"Run {endpoint.id}, streaming progress as server-sent events",
                         response_class=StreamingResponse,
                         responses={200: {"content": {"text/event-stream": {}},
                                          "description": "`data:` JSON events; the last one is the output."}},
                         dependencies=[Depends(require_key_or_app_token(lambda _r: alias))])
    return router


def unknown_endpoint_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.api_route("/{path:path}", methods=["POST", "GET", "PUT"])
    async def unknown(path: str, _auth=Depends(require_key)):
        return error_response(404, f"Unknown endpoint: {path!r}")

    return router
