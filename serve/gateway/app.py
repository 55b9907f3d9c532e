"""Builds the gateway's FastAPI app from the endpoint registry: one origin for fal's four hosts."""

from __future__ import annotations

from fastapi import FastAPI

from serve.config import VisusConfig
from serve.gateway.body_limit import BodySizeLimit
from serve.gateway.errors import install_error_handlers
from serve.gateway.ops_routes import ops_router
from serve.gateway.realtime_routes import realtime_router, unknown_realtime_router
from serve.gateway.queue_routes import requests_router, submit_router
from serve.gateway.run_routes import endpoint_router, unknown_endpoint_router
from serve.gateway.segmind_routes import segmind_fallback_router, segmind_router
from serve.gateway.storage_routes import storage_router
from serve.gateway.token_routes import token_router
from serve.registry import EndpointRegistry


def create_app(config: VisusConfig, registry: EndpointRegistry) -> FastAPI:
    app = FastAPI(
        title="Visus",
        version="0.1.0",
        description="Self-hosted fal.ai-compatible API for promptable segmentation and image-to-video models. "
                    "Send `Authorization: Key <key>` on every route except /files/ downloads and signed uploads.",
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=config.limits.max_body_bytes,
                       max_upload_bytes=config.limits.max_upload_bytes)
    # Reserved first segments (queue, rest, cdn, files, v1) are routed before the run catch-all.
    app.include_router(ops_router())
    app.include_router(token_router())
    app.include_router(storage_router())
    for endpoint in registry.segmind():
        app.include_router(segmind_router(endpoint))
    app.include_router(segmind_fallback_router())
    for endpoint in registry:
        app.include_router(submit_router(endpoint))
    app.include_router(requests_router())
    for endpoint in registry:
        app.include_router(endpoint_router(endpoint))
        app.include_router(realtime_router(endpoint))
    app.include_router(unknown_endpoint_router())
    app.include_router(unknown_realtime_router())
    return app
