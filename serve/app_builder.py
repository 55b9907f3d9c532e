"""Builds the Ray Serve application (gateway + one deployment per endpoint) from a Visus config.

`app_builder` is the import path a `serve run` / `serve deploy` / RayService config names, so the
rendered config files and `visus up` build the very same application.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from serve.config import EndpointConfig, VisusConfig, WorkerConfig, load_config
from serve.gateway.ingress import gateway_deployment
from serve.registry import import_object


def detect_gpu() -> bool:
    """VISUS_GPU=0|1 forces it; otherwise ask the connected Ray cluster (or torch when none)."""
    forced = os.environ.get("VISUS_GPU")
    if forced in ("0", "1"):
        return forced == "1"
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def platform_settings(config: VisusConfig) -> dict[str, Any]:
    """What every model deployment needs of the platform (plain data: it crosses Ray)."""
    return {
        "storage_url": config.resolved_storage_url,
        "secret_key": config.secret_key,
        "fetch": config.fetch.model_dump(),
        "limits": config.limits.model_dump(),
        "own_origins": [config.public_url] if config.public_url else [],
    }


def _bind(config: VisusConfig, spec: EndpointConfig | WorkerConfig, name: str, platform: dict, has_gpu: bool,
          workers: dict | None = None):
    """One model deployment bound to its settings; `workers` become handles inside its replicas."""
    deployment = serve.deployment(import_object(spec.deployment), name=name, **spec.options.ray_options(has_gpu))
    model = config.model_setting(spec.model)
    if not has_gpu and model.get("device") not in (None, "auto", "cpu"):
        model["device"] = "cpu"
    return deployment.bind(model, platform, workers) if workers else deployment.bind(model, platform)


def build_app(config: VisusConfig, has_gpu: bool | None = None):
    config = config.with_secrets()
    has_gpu = detect_gpu() if has_gpu is None else has_gpu
    platform = platform_settings(config)
    endpoints = {e.deployment_name: e for e in config.enabled_endpoints()}
    bound: dict[str, Any] = {}

    def bind_endpoint(name: str, seen: tuple[str, ...] = ()):
        # Memoised: a deployment other endpoints use as a worker is bound once and shared.
        if name in bound:
            return bound[name]
        if name in seen:
            raise ValueError(f"endpoints use each other as workers in a cycle: {' -> '.join((*seen, name))}")
        endpoint = endpoints[name]
        workers = {}
        for worker in endpoint.workers:
            if worker.deployment is None:
                workers[worker.name] = bind_endpoint(worker.name, (*seen, name))
            else:
                workers[worker.name] = bound.setdefault(worker.name, _bind(config, worker, worker.name, platform, has_gpu))
        bound[name] = _bind(config, endpoint, name, platform, has_gpu, workers)
        return bound[name]

    models = {name: bind_endpoint(name) for name in endpoints}
    return gateway_deployment(config, has_gpu).bind(config.model_dump(mode="json"), models)


def app_builder(args: dict[str, Any]):
    """Ray Serve application builder: `args.config` is a Visus config path or an inline mapping."""
    source = args.get("config")
    if isinstance(source, dict):
        config = VisusConfig(**source)
    else:
        config = load_config(source)
    return build_app(config)
