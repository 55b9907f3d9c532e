"""The rendered `serve run` / `serve deploy` config (`visus config render`) is valid for Ray 2.60's Serve.

Checked offline against the strict ServeDeploySchema (tests/schemas/, from ../shared/reference/kuberay:
every model closed, so a misspelt option is an error), for the default config on CPU and GPU clusters.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from serve.cli import render_serve_config
from serve.config import load_config

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "serve_deploy_schema-strict.json").read_text())


@pytest.mark.parametrize("has_gpu", [False, True])
def test_rendered_config_matches_the_strict_serve_schema(has_gpu):
    rendered = render_serve_config(load_config(None, api_keys=["k"], secret_key="s"), has_gpu=has_gpu)
    jsonschema.Draft202012Validator(SCHEMA).validate(json.loads(json.dumps(rendered)))


def test_a_misspelt_option_is_caught():
    rendered = render_serve_config(load_config(None, api_keys=["k"], secret_key="s"), has_gpu=False)
    rendered["applications"][0]["deployments"][0]["max_ongoing_request"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(rendered)
