"""Offline validators for rendered manifests: the strict Ray Serve config schema and KubeRay's CRDs.

The schemas are vendored in tests/schemas/ (copied from ../shared/reference/kuberay/jsonschema, see
its README: Ray 2.60.0, KubeRay v1.7.0), so CI needs neither a cluster nor ../shared. "Strict" means
every object is closed, so a misspelt field name is an error rather than silently ignored.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema
import yaml

SCHEMAS = Path(__file__).parent / "schemas"
# (apiVersion, kind) -> vendored CRD schema (draft-07)
KUBERAY_SCHEMAS = {("ray.io/v1", "RayService"): "rayservice_v1-strict.json"}


@functools.cache
def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def serve_validator() -> jsonschema.Draft202012Validator:
    """Ray 2.60's ServeDeploySchema, closed (draft 2020-12: it uses $defs)."""
    return jsonschema.Draft202012Validator(_schema("serve_deploy_schema-strict.json"))


def _where(error: jsonschema.ValidationError) -> str:
    return "/" + "/".join(map(str, error.absolute_path))


def serve_config_errors(config: dict) -> list[str]:
    """Unknown keys and bad types (strict schema), then Serve's own rules (its pydantic model, which
    for example refuses num_replicas together with autoscaling_config)."""
    config = json.loads(json.dumps(config))  # plain JSON types, as the YAML file will hold
    errors = [f"{_where(e)}: {e.message[:200]}" for e in serve_validator().iter_errors(config)]
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except Exception as exc:  # pydantic.ValidationError
        errors.append(f"(pydantic) {str(exc).splitlines()[0]}")
    return errors


def manifest_errors(doc: dict) -> list[str]:
    """Errors of one Kubernetes document: its CRD schema for ray.io kinds, and a RayService's
    serveConfigV2 (a YAML string) against the Serve schema. Core kinds are not checked here."""
    name = KUBERAY_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    if name is None:
        return []
    validator = jsonschema.Draft7Validator(_schema(name))
    errors = [f"{doc['kind']} {_where(e)}: {e.message[:200]}" for e in validator.iter_errors(doc)]
    serve_config = doc.get("spec", {}).get("serveConfigV2")
    if doc["kind"] == "RayService" and isinstance(serve_config, str):
        errors += [f"serveConfigV2 {e}" for e in serve_config_errors(yaml.safe_load(serve_config))]
    return errors
