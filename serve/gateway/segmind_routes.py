"""Segmind's v1 API: `POST /v1/{model-slug}` with `x-api-key`, answered with the output file itself.

Every answer carries `x-remaining-credits`; a call needs `segmind.cost_per_call` credits (406 when
they are spent) and only a 200 consumes them. Errors are Segmind's `{"error": "..."}` with the
status codes its SDK knows: 400, 401, 404, 405, 406, 422 and 500.
"""
# No `from __future__ import annotations`: FastAPI must see the route's parameter types themselves.

import asyncio
import base64
import json
import uuid

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from serve.gateway.services import GatewayServices, services
from serve.job_events import JobContext
from serve.jobs.records import error_message
from serve.registry import Endpoint

API_KEY_HEADER = Header(None, alias="x-api-key", description="Your API key (Segmind's header).")
ERRORS = {code: {"description": text, "content": {"application/json": {"example": {"error": text}}}}
          for code, text in [(400, "Bad request"), (401, "Missing or invalid x-api-key"), (406, "Not enough credits"),
                             (422, "Invalid parameter; the message names it"), (500, "Server error")]}


def segmind_error(status_code: int, message: str, remaining: float | None = None) -> JSONResponse:
    headers = {} if remaining is None else {"x-remaining-credits": credits_text(remaining)}
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def credits_text(value: float) -> str:
    return f"{value:g}"


def starting_credits(svc: GatewayServices, key: str | None) -> float | None:
    """What `key` starts with, or None when it is no Segmind key (nor a Visus API key)."""
    if not key:
        return None
    if key in svc.config.segmind.credits:
        return svc.config.segmind.credits[key]
    if svc.keys.check(key):
        return svc.config.segmind.default_credits
    return None


def request_key(x_api_key: str | None, authorization: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization.lower().startswith("key "):  # a fal-style key works too
        return authorization[4:].strip()
    return None


def segmind_router(endpoint: Endpoint) -> APIRouter:
    router = APIRouter(tags=[f"segmind {endpoint.id}"])
    Input = endpoint.input_model

    async def run(request: Request, x_api_key: str | None = API_KEY_HEADER,
                  authorization: str | None = Header(None, include_in_schema=False)):
        svc = services()
        key = request_key(x_api_key, authorization)
        starting = starting_credits(svc, key)
        if starting is None:
            return segmind_error(401, "Missing or invalid x-api-key")
        try:
            payload = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return segmind_error(400, "The body must be JSON")
        try:
            body = Input.model_validate(payload)
        except ValidationError as exc:
            detail = {"detail": exc.errors(include_url=False, include_context=False)}
            return segmind_error(422, error_message(detail, 422))

        cost = svc.config.segmind.cost_per_call
        reserved, left = await svc.credits.reserve.remote(key, cost, starting)
        if not reserved:
            return segmind_error(406, "Not enough credits", left)
        request_id = str(uuid.uuid4())
        ctx = JobContext(request_id, svc.base_url(request), f"segmind/{endpoint.id}").to_dict()
        call = svc.handle(endpoint.deployment_name).run.remote(body.model_dump(mode="json"), ctx)
        try:
            event = await asyncio.wait_for(call, timeout=svc.config.limits.sync_timeout_s)
        except asyncio.TimeoutError:
            call.cancel()
            event = {"status_code": 504, "body": {"detail": "The model did not answer in time"}}
        except Exception as exc:  # the model replica died or could not be reached
            event = {"status_code": 500, "body": {"detail": f"Model deployment failed: {type(exc).__name__}"}}
        status = int(event["status_code"])
        if status != 200:
            left = await svc.credits.refund.remote(key, cost, starting)
            mapped = 422 if status == 422 else 400 if 400 <= status < 500 else 500
            return segmind_error(mapped, error_message(event["body"], status), left)

        headers = {"x-remaining-credits": credits_text(left), "x-credits-consumed": credits_text(cost),
                   "x-request-id": request_id}
        output = event["body"]
        if body.base64:
            return JSONResponse({"image": output["image"]}, headers=headers)
        return Response(base64.b64decode(output["image"]), media_type=output["content_type"], headers=headers)

    schema = Input.model_json_schema(ref_template="#/components/schemas/{model}")
    router.add_api_route(
        f"/v1/{endpoint.id}", run, methods=["POST"], summary=f"Segmind {endpoint.id} ({endpoint.title})",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
        responses={200: {"description": "The output image itself (`base64: false`), or "
                                        "`{\"image\": \"<base64>\"}` (`base64: true`).",
                         "headers": {"x-remaining-credits": {"schema": {"type": "string"}}},
                         "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                                     "application/json": {"schema": endpoint.output_model.model_json_schema()}}},
                   **ERRORS})
    return router


def segmind_fallback_router() -> APIRouter:
    """Unknown slugs and other methods under /v1/ answer in Segmind's shape, not fal's."""
    router = APIRouter(include_in_schema=False)

    @router.api_route("/v1/{path:path}", methods=["GET", "PUT", "DELETE", "PATCH", "POST"])
    async def fallback(request: Request, path: str):
        svc = services()
        known = {e.id for e in svc.registry.segmind()}
        if path in known:
            return segmind_error(405, f"Method {request.method} not allowed: use POST /v1/{path}")
        return segmind_error(404, f"Unknown model: {path!r}")

    return router
