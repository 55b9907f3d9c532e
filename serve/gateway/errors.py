"""Error bodies in fal's shapes, and the handlers that guarantee no user mistake becomes a 500."""


import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("visus.gateway")


def error_response(status_code: int, detail, error_type: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"detail": detail}
    headers = dict(headers or {})
    if error_type:
        body["error_type"] = error_type
        headers["X-Fal-Error-Type"] = error_type
    return JSONResponse(body, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        for err in errors:
            err.pop("url", None)
            ctx = err.get("ctx")
            if ctx:  # ctx may hold exception objects, which are not JSON
                err["ctx"] = {k: str(v) for k, v in ctx.items()}
            if isinstance(err.get("input"), (bytes, bytearray)):
                err["input"] = err["input"].decode("utf-8", "replace")[:200]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404 and exc.detail == "Not Found":
            return error_response(404, f"No route or endpoint for {request.method} {request.url.path}")
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal error: {type(exc).__name__}", "internal_error")
