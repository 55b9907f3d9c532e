"""Realtime websockets (`ws://HOST/{endpoint_id}/realtime`) in fal's protocol.

Each binary frame from the client is the msgpack of one input object (JSON text frames are taken
too); each processed input gets exactly one binary msgpack frame with the output, followed by an
`x-fal-message` timings frame. A bad input gets an `x-fal-error` text frame naming the field and the
session goes on. Inputs wait in a newest-input-wins buffer (`max_buffering`, 1-60); an idle session
gets `TIMEOUT` and a close with 1000, the only code both clients take as a clean end.
"""

# No `from __future__ import annotations`: in the Ray replica FastAPI must see `WebSocket` itself, or it
# takes the parameter for a query field.

import asyncio
import base64
import json
import logging
import time
import uuid
from typing import Any

import msgpack
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from serve.auth import Unauthorized
from serve.gateway.security import bearer_token
from serve.gateway.services import GatewayServices, services
from serve.job_events import JobContext
from serve.jobs.records import error_message
from serve.realtime_buffer import BufferClosed, NewestInputWins
from serve.registry import Endpoint

logger = logging.getLogger("visus.realtime")

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # bad credentials or session parameters: not a clean end, so clients report it


class SessionRefused(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def fal_error(code: str, reason: str) -> str:
    return json.dumps({"type": "x-fal-error", "error": code, "reason": reason})


def error_code(status_code: int) -> str:
    if status_code == 413:
        return "PAYLOAD_TOO_LARGE"
    if status_code == 504:
        return "REQUEST_TIMEOUT"  # not "TIMEOUT": the JS client ignores that code (it means session end)
    if 400 <= status_code < 500:
        return "BAD_REQUEST"
    return "INTERNAL_ERROR"


def parse_buffering(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        size = int(value)
    except ValueError:
        size = 0
    if not 1 <= size <= 60:
        raise SessionRefused("BAD_REQUEST", f"max_buffering must be an integer from 1 to 60, got {value!r}")
    return size


def authorize(websocket: WebSocket, svc: GatewayServices, alias: str) -> None:
    """`Authorization: Key` on the upgrade (py `use_jwt=False`) or `?fal_jwt_token=` scoped to the alias."""
    authorization = websocket.headers.get("authorization")
    if svc.keys.check_header(authorization):
        return
    token = websocket.query_params.get("fal_jwt_token") or bearer_token(authorization)
    if token is None:
        raise SessionRefused("UNAUTHORIZED", "send ?fal_jwt_token=<token from POST /rest/tokens/> or "
                                             "'Authorization: Key <key>'")
    try:
        svc.tokens.verify_app(token, alias)
    except Unauthorized as exc:
        raise SessionRefused("UNAUTHORIZED", str(exc)) from None


def decode_input(message: dict) -> dict:
    """One websocket message -> the input object; raw bytes values become data URIs (e.g. `image_url`)."""
    if message.get("bytes") is not None:
        try:
            value = msgpack.unpackb(message["bytes"], raw=False)
        except Exception:
            raise ValueError("binary frames must be msgpack") from None
    else:
        try:
            value = json.loads(message.get("text") or "")
        except json.JSONDecodeError:
            raise ValueError("text frames must be JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"each message must be a map of the endpoint's input fields, got {type(value).__name__}")
    return {key: data_uri(item) if isinstance(item, (bytes, bytearray)) else item for key, item in value.items()}


def data_uri(data: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode()


class RealtimeSession:
    """One client's session: a receiver filling the buffer, a worker running inputs one at a time."""

    def __init__(self, websocket: WebSocket, endpoint: Endpoint, svc: GatewayServices, buffering: int):
        self.ws = websocket
        self.endpoint = endpoint
        self.svc = svc
        self.settings = svc.config.realtime
        self.buffer = NewestInputWins(buffering)
        self.base_url = f"{'https' if websocket.url.scheme == 'wss' else 'http'}://{websocket.url.netloc}"
        if svc.config.public_url:
            self.base_url = svc.config.public_url.rstrip("/")

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive())
        worker = asyncio.create_task(self._work())
        done, _ = await asyncio.wait({receiver, worker}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done:
            worker.cancel()  # the client is gone: nobody to answer, so stop the input in flight too
        receiver.cancel()
        await asyncio.gather(receiver, worker, return_exceptions=True)

    async def _receive(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                size = len(message.get("bytes") or b"") + len(message.get("text") or "")
                if size > self.settings.max_message_bytes:
                    await self._send_text(fal_error("PAYLOAD_TOO_LARGE", f"message of {size} bytes is over the "
                                                    f"{self.settings.max_message_bytes}-byte limit"))
                    continue
                try:
                    self.buffer.put(decode_input(message))
                except ValueError as exc:
                    await self._send_text(fal_error("BAD_REQUEST", str(exc)))
        finally:
            self.buffer.close()

    async def _work(self) -> None:
        while True:
            try:
                payload = await self.buffer.get(self.settings.idle_timeout_s)
            except asyncio.TimeoutError:
                await self._send_text(fal_error("TIMEOUT", "no inputs, reconnect when needed!"))
                break
            except BufferClosed:
                break
            await self._process(payload)
        if self.ws.client_state == WebSocketState.CONNECTED:
            await self.ws.close(CLOSE_NORMAL)

    async def _process(self, payload: dict) -> None:
        started = time.perf_counter()
        try:
            body = self.endpoint.input_model.model_validate(payload).model_dump(mode="json")
        except ValidationError as exc:
            detail = {"detail": exc.errors(include_url=False, include_context=False)}
            await self._send_text(fal_error("BAD_REQUEST", error_message(detail, 422)))
            return
        ctx = JobContext(str(uuid.uuid4()), self.base_url, self.endpoint.id).to_dict()
        call = self.svc.handle(self.endpoint.deployment_name).run.remote(body, ctx)
        try:
            event = await asyncio.wait_for(call, timeout=self.svc.config.limits.sync_timeout_s)
        except asyncio.TimeoutError:
            call.cancel()
            event = {"status_code": 504, "body": {"detail": "The model did not answer in time"}}
        except asyncio.CancelledError:
            call.cancel()
            raise
        except Exception as exc:  # the model replica died or could not be reached
            logger.warning("realtime input on %s failed: %r", self.endpoint.id, exc)
            event = {"status_code": 503, "body": {"detail": f"Model deployment failed: {type(exc).__name__}"}}
        status = int(event["status_code"])
        if status >= 400:
            await self._send_text(fal_error(error_code(status), error_message(event["body"], status)))
            return
        await self._send(self.ws.send_bytes, msgpack.packb(event["body"], use_bin_type=True))
        await self._send_text(json.dumps({"type": "x-fal-message", "action": "timings",
                                          "timing": round(time.perf_counter() - started, 6)}))

    async def _send_text(self, text: str) -> None:
        await self._send(self.ws.send_text, text)

    async def _send(self, send, data: Any) -> None:
        try:
            await send(data)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left while we answered; the receiver sees the disconnect


def realtime_router(endpoint: Endpoint) -> APIRouter:
    router = APIRouter()
    alias = endpoint.parsed.alias

    async def realtime(websocket: WebSocket):
        svc = services()
        await websocket.accept()
        try:
            authorize(websocket, svc, alias)
            buffering = parse_buffering(websocket.query_params.get("max_buffering"),
                                        svc.config.realtime.default_buffering)
        except SessionRefused as exc:
            await websocket.send_text(fal_error(exc.code, exc.reason))
            await websocket.close(CLOSE_POLICY, exc.reason[:120])
            return
        await RealtimeSession(websocket, endpoint, svc, buffering).run()

    router.add_api_websocket_route(f"/{endpoint.id}/realtime", realtime)
    return router


def unknown_realtime_router() -> APIRouter:
    """Any other websocket path: say so, rather than the framework's silent (clean) close."""
    router = APIRouter()

    async def unknown(websocket: WebSocket, path: str):
        await websocket.accept()
        await websocket.send_text(fal_error("NOT_FOUND", f"no realtime endpoint at /{path}"))
        await websocket.close(CLOSE_POLICY)

    router.add_api_websocket_route("/{path:path}", unknown)
    return router
