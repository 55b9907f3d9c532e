"""The rendered `serve run` / `serve deploy` config (`visus config render`) is valid for Ray 2.60's Serve.

Checked offline against the strict ServeDeploySchema and Serve's own pydantic model
(tests/manifest_schemas.py; every model closed, so a misspelt option is an error), for the default
config on CPU and GPU clusters. The KubeRay manifests' serveConfigV2 is checked the same way
(tests/unit/test_k8s_manifests.py).
"""

from __future__ import annotations

import pytest

from serve.cli import render_serve_config
from serve.config import load_config
from tests.manifest_schemas import serve_config_errors


@pytest.mark.parametrize("has_gpu", [False, True])
def test_rendered_config_matches_the_strict_serve_schema(has_gpu):
    rendered = render_serve_config(load_config(None, api_keys=["k"], secret_key="s"), has_gpu=has_gpu)
    assert serve_config_errors(rendered) == []


def test_a_misspelt_option_is_caught():
    rendered = render_serve_config(load_config(None, api_keys=["k"], secret_key="s"), has_gpu=False)
    rendered["applications"][0]["deployments"][0]["max_ongoing_request"] = 3
    errors = serve_config_errors(rendered)
    assert len(errors) == 1 and "max_ongoing_request" in errors[0]


def test_replicas_together_with_autoscaling_are_caught():
    rendered = render_serve_config(load_config(None, api_keys=["k"], secret_key="s"), has_gpu=False)
    deployment = next(d for d in rendered["applications"][0]["deployments"] if "autoscaling_config" in d)
    deployment["num_replicas"] = 2  # valid for the strict schema; Serve's own model refuses the pair
    assert any("(pydantic)" in e for e in serve_config_errors(rendered))
