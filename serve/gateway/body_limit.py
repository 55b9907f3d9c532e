"""ASGI middleware capping request bodies (413), with a larger cap for file uploads."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException

UPLOAD_PREFIXES = ("/files/", "/cdn/")


class BodySizeLimit:
    def __init__(self, app, max_body_bytes: int, max_upload_bytes: int):
        self.app = app
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_upload if scope["path"].startswith(UPLOAD_PREFIXES) else self.max_body
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await self._reject(send, limit)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send, limit: int) -> None:
        body = json.dumps({"detail": _too_large_message(limit)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _too_large_message(limit: int) -> str:
    return f"request body larger than the {limit} byte limit"


class _TooLarge(HTTPException):
    """Raised from receive() when a body without (or with a lying) Content-Length runs over the cap.

    An HTTPException so FastAPI's body parsing re-raises it (any other exception there becomes a
    400 "error parsing the body") and the app's HTTPException handler answers 413, also for routes
    that read the body themselves; the catch in __call__ covers anything outside those handlers.
    """

    def __init__(self, limit: int):
        super().__init__(413, _too_large_message(limit))
