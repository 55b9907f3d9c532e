"""Shared fixtures: one real local Ray Serve cluster per test session, serving Visus on loopback.

Unit tests (tests/unit) never touch it; integration tests ask for `visus` (a running stack) and get
its URL, API key and config. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key-id:test-key-secret"
# A second loopback address stands in for "some allowed remote host" in fetch and webhook tests;
# 127.0.0.1 itself is NOT allow-listed, so the SSRF guard must refuse it.
ALLOWED_HOST = "127.0.0.2"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    url: str
    key: str
    config: object
    home: Path

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Key {self.key}"}

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kw)


def _wait_ready(url: str, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", headers={"Authorization": f"Key {API_KEY}"}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("Visus did not become ready")


VIDEO_CHUNK = 4  # frames per range: smaller than the test videos, so every video spans several ranges
VIDEO_ENCODERS = 2


SMALL = {"num_cpus": 0.5, "max_ongoing_requests": 2}
SA2VA_CHUNK = 3
# Segmind keys with few credits, for the credit tests (each test uses its own key).
SEGMIND_KEYS = {"sg-two-credits": 2, "sg-no-credits": 0, "sg-one-credit": 1}


def _small_deployments(endpoint):
    """Every endpoint on one replica of half a CPU, so all fit the test cluster; the video endpoint
    with short ranges and two encoder replicas."""
    options = endpoint.options.model_copy(update={**SMALL, "num_replicas": 1, "autoscaling_config": None})
    if endpoint.id.startswith("fal-ai/sa2va/") and endpoint.id.endswith("/video"):
        # Short ranges, so a few-frame video is tracked over several ranges (on the encoder worker).
        workers = [w.model_copy(update={"options": w.options.model_copy(
            update={**SMALL, "num_replicas": 1, "autoscaling_config": None})}) for w in endpoint.workers]
        return endpoint.model_copy(update={"model": {**endpoint.model, "chunk_size": SA2VA_CHUNK},
                                           "options": options, "workers": workers})
    if endpoint.id != "fal-ai/sam2/video":
        return endpoint.model_copy(update={"options": options})
    workers = [w.model_copy(update={"options": w.options.model_copy(
        update={**SMALL, "num_replicas": VIDEO_ENCODERS, "autoscaling_config": None})}) for w in endpoint.workers]
    return endpoint.model_copy(update={
        "model": {**endpoint.model, "chunk_size": VIDEO_CHUNK, "prefetch": 2},
        "options": options, "workers": workers})


@pytest.fixture(scope="session")
def visus(tmp_path_factory) -> Stack:
    from serve.ray_env import apply_ray_env_defaults

    # The settings `make serve` runs with (HAProxy + direct ingress), so SSE and streaming are tested on them.
    apply_ray_env_defaults()
    import ray
    from ray import serve

    from serve.app_builder import build_app
    from serve.cli import write_tiny_models
    from serve.config import load_config

    home = tmp_path_factory.mktemp("visus-home")
    port = free_port()
    config = load_config(
        None, home=str(home), port=port, host="127.0.0.1", api_keys=[API_KEY],
        fetch={"allow": [ALLOWED_HOST], "max_bytes": 8 * 2**20, "timeout_s": 10},
        webhooks={"attempts": 4, "first_backoff_s": 0.2, "max_backoff_s": 1.0, "timeout_s": 5},
        limits={"max_body_bytes": 16 * 2**20, "max_image_pixels": 20_000_000, "sync_timeout_s": 120},
        realtime={"idle_timeout_s": 4},
        segmind={"credits": SEGMIND_KEYS},
    )
    config = config.model_copy(update={"endpoints": [_small_deployments(e) for e in config.endpoints]})
    write_tiny_models(config.resolved_model_dir)
    config = config.with_secrets()
    # A cluster of our own ("local"), never one a developer left running with `make serve`. Its node
    # address is 127.0.0.2: Ray swaps 127.0.0.1 for the machine's outward address, and the cluster's
    # own traffic must stay on loopback.
    ray.init(address="local", num_cpus=7, include_dashboard=False, namespace=config.queue.namespace,
             _node_ip_address="127.0.0.2", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config, has_gpu=False), name=config.app_name, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url)
    yield Stack(url=url, key=API_KEY, config=config, home=home)
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on 127.0.0.1 (a free port, a password, no persistence) for the Redis journal
    tests; fails them when redis-server is missing, unless VISUS_SKIP_REDIS=1."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    yield server
    server.stop()
