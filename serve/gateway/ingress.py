"""The gateway as a Ray Serve ingress deployment (FastAPI, CPU only)."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve.config import VisusConfig, config_from_dict
from serve.gateway.app import create_app
from serve.gateway.services import GatewayServices, install
from serve.jobs.client import get_queue_actor
from serve.segmind_credits import get_credit_ledger
from serve.registry import EndpointRegistry

GATEWAY_NAME = "gateway"


def gateway_deployment(config: VisusConfig, has_gpu: bool):
    """A deployment class whose FastAPI app is built from this config's registry."""
    app = create_app(config, EndpointRegistry(config.enabled_endpoints()))

    @serve.ingress(app)
    class Gateway:
        def __init__(self, config_data: dict, model_handles: dict[str, Any]):
            cfg = config_from_dict(config_data)
            svc = GatewayServices.from_config(cfg, EndpointRegistry(cfg.enabled_endpoints()))
            svc.handles.update(model_handles)
            svc.queue = get_queue_actor(cfg)
            if cfg.segmind_endpoints():
                svc.credits = get_credit_ledger(cfg)
            install(svc)

    return serve.deployment(Gateway, name=GATEWAY_NAME, **config.gateway.ray_options(has_gpu=False))
