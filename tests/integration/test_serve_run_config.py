"""`visus config render` produces a `serve run` config file that builds the same working application."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.helpers import png_data_uri

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def test_rendered_config_runs_with_serve_run(tmp_path, visus):
    port = free_port()
    env = {**os.environ, "VISUS_HOME": str(tmp_path / "home"), "VISUS_PORT": str(port),
           "VISUS_API_KEYS": "rendered-key", "VISUS_MODEL_DIR": str(visus.config.resolved_model_dir),
           "VISUS_QUEUE__ACTOR_NAME": "rendered-queue", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "serve_config.yaml"
    subprocess.run([BIN / "visus", "config", "render", "--gpu", "no", "-o", str(out)], env=env, check=True)
    rendered = yaml.safe_load(out.read_text())
    app = rendered["applications"][0]
    assert app["import_path"] == "serve.app_builder:app_builder"
    # grounding_dino once, though two endpoints use it (sam-v2-image's own, evf-sam's worker).
    assert sorted(d["name"] for d in app["deployments"]) == sorted([
        "gateway", "fal_ai__sam2__image", "fal_ai__sam2__video", "sam2_video_encoder", "fal_ai__evf_sam",
        "grounding_dino", "fal_ai__svd", "fal_ai__sa2va__8b__image", "fal_ai__sa2va__8b__video", "sa2va_8b_encoder",
        "fal_ai__sa2va__4b__image", "fal_ai__sa2va__4b__video"])
    assert "rendered-key" not in out.read_text()  # secrets stay out of rendered files
    # A CPU cluster could never place a replica asking for a GPU share.
    assert all("num_gpus" not in d["ray_actor_options"] for d in app["deployments"])
    # Options in the file win over the builder's: what an operator edits to fit this small test box.
    for d in app["deployments"]:
        d["ray_actor_options"]["num_cpus"] = 0.1
    out.write_text(yaml.safe_dump(rendered))

    # The application builder runs inside the cluster: it reads secrets from the config's home folder
    # (where `visus up` keeps them), not from this shell's environment.
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "home" / "api_key").write_text("rendered-key")
    run_env = {k: v for k, v in env.items() if not k.startswith("VISUS_")}
    # HAProxy's stats and metrics ports are fixed per host; the session's cluster holds the defaults.
    run_env.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    # HAProxy falls back to Ray's proxy on a fixed port, and direct-ingress replica ports come from a fixed
    # range: the session's cluster holds the defaults, and HAProxy would route to its gateway, not ours.
    run_env.update(RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=str(free_port()), RAY_SERVE_FALLBACK_PROXY_GRPC_PORT=str(free_port()))
    run_env.update(RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT="31000", RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT="32000",
                   RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT="41000", RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT="42000")
    # A separate cluster of its own, never one a developer left running.
    proc = subprocess.Popen([BIN / "serve", "run", "--address", "local", str(out)], env=run_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": "Key rendered-key"}
        deadline = time.time() + 240
        while time.time() < deadline:
            assert proc.poll() is None, "serve run exited"
            try:
                if httpx.get(f"{url}/readyz", headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        response = httpx.post(f"{url}/fal-ai/sam2/image", headers=headers, timeout=240,
                              json={"image_url": png_data_uri(32, 32), "prompts": [{"x": 4, "y": 4}]})
        assert response.status_code == 200, response.text
        assert response.json()["image"]["width"] == 32
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
