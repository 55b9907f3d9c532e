"""Config schema, env overrides, endpoint ids, registry resolution and the rendered serve config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.cli import render_serve_config
from serve.config import VisusConfig, load_config
from serve.endpoint_ids import parse_endpoint_id
from serve.registry import EndpointRegistry


def test_env_overrides_yaml(monkeypatch):
    monkeypatch.setenv("VISUS_PORT", "9123")
    monkeypatch.setenv("VISUS_API_KEYS", "a, b,,c")
    monkeypatch.setenv("VISUS_LIMITS__SYNC_TIMEOUT_S", "42")
    config = load_config(None, port=8000)
    assert config.port == 9123 and config.api_keys == ["a", "b", "c"]
    assert config.limits.sync_timeout_s == 42


def test_unknown_keys_are_errors():
    with pytest.raises(ValidationError):
        load_config(None, gatewy={"num_cpus": 1})
    with pytest.raises(ValidationError):
        load_config(None, limits={"sync_timeout": 3})


def test_reserved_owner_and_bad_ids_are_refused():
    base = load_config().endpoints[0].model_dump()
    for bad in ("queue/x/y", "files/a", "lonely", "fal-ai/x/stream"):
        with pytest.raises(ValidationError):
            VisusConfig(endpoints=[{**base, "id": bad}])


@pytest.mark.parametrize("endpoint_id,base,path", [
    ("fal-ai/sam2/image", "fal-ai/sam2", "image"),
    ("fal-ai/sa2va/8b/video", "fal-ai/sa2va", "8b/video"),
    ("fal-ai/evf-sam", "fal-ai/evf-sam", None),
    ("workflows/u/app/x", "workflows/u/app", "x"),
    ("1234-myapp", "1234/myapp", None),
])
def test_endpoint_id_parsing(endpoint_id, base, path):
    parsed = parse_endpoint_id(endpoint_id)
    assert (parsed.queue_base, parsed.path) == (base, path)


def test_registry_resolves_longest_match():
    registry = EndpointRegistry(load_config().endpoints)
    endpoint, rest = registry.resolve("/fal-ai/sam2/image/stream")
    assert endpoint.id == "fal-ai/sam2/image" and rest == "stream"
    assert registry.resolve("fal-ai/sam2") is None


def test_secrets_are_generated_once_and_kept(tmp_path):
    config = load_config(None, home=str(tmp_path), api_keys=[]).with_secrets()
    again = load_config(None, home=str(tmp_path), api_keys=[]).with_secrets()
    assert config.api_keys == again.api_keys and config.secret_key == again.secret_key
    assert (tmp_path / "api_key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("has_gpu", [True, False])
def test_rendered_config_follows_the_visus_config(has_gpu):
    config = load_config(None, api_keys=["secret-key"])
    rendered = render_serve_config(config, has_gpu)
    app = rendered["applications"][0]
    assert app["import_path"] == "serve.app_builder:app_builder"
    by_name = {d["name"]: d for d in app["deployments"]}
    sam2 = by_name["fal_ai__sam2__image"]
    assert sam2["autoscaling_config"]["max_replicas"] == config.endpoints[0].options.autoscaling_config.max_replicas
    assert ("num_gpus" in sam2["ray_actor_options"]) == has_gpu
    assert "secret-key" not in str(rendered)
