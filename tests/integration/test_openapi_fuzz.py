"""Property-based fuzzing of every operation in the gateway's own OpenAPI document (schemathesis 4).

Each operation gets a bounded, derandomized set of generated requests (valid and invalid), sent with
the API key; no response may be a server error, and responses must match the documented schema.
The SAM 2 model replica must still serve a good request afterwards.

Network safety: generated values that could make the server reach out (an `image_url` or a
`fal_webhook` with a scheme) are swapped, right before each call, for a loopback URL the fetch guard
refuses by address, so no generated request ever leads to DNS or an outbound connection.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.helpers import png_data_uri

pytestmark = pytest.mark.integration

# Refused by the SSRF guard by address (127.0.0.1 is not allow-listed): no packet is sent.
SAFE_URL = "http://127.0.0.1:9/fuzz.png"
SAFE_WEBHOOK = "http://127.0.0.1:9/hook"
MAX_EXAMPLES = 15

CHECKS = [not_a_server_error, response_schema_conformance]


def gateway_openapi() -> dict:
    """The gateway's OpenAPI document, built from the same default config the `visus` fixture uses.

    Built at import time because schemathesis needs the operations when pytest collects; its
    fixture-based lazy loader (`schemathesis.pytest.from_fixture`) does not work under pytest 9
    (it sets `Function._nodeid`, which pytest 9 no longer has). `test_live_spec_matches` checks
    that the running gateway serves the same operations.
    """
    from serve.config import load_config
    from serve.gateway.app import create_app
    from serve.registry import EndpointRegistry

    config = load_config(None, api_keys=["collection-only"], secret_key="collection-only")
    return create_app(config, EndpointRegistry(config.enabled_endpoints())).openapi()


SPEC = gateway_openapi()
schema = schemathesis.openapi.from_dict(SPEC)
schema.config.update(request_timeout=60)
# The coverage phase is not bounded by max_examples (it enumerates boundary and negative values of
# every field: ~170 cases per model endpoint); keep its positive boundary cases only; fuzzing
# still sends negative cases, and test_bad_input covers the endpoints' invalid input in depth.
schema.config.phases.coverage.generation.modes = [GenerationMode.POSITIVE]


def _defuse(value):
    """Replace any string that has a URL scheme (other than data:) by a refused loopback URL."""
    if isinstance(value, str):
        if ":" in value and value[:5].lower() != "data:":
            return SAFE_URL
        return value
    if isinstance(value, dict):
        return {k: _defuse(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_defuse(v) for v in value]
    return value


def make_safe(case) -> None:
    if isinstance(case.body, (dict, list, str)):
        case.body = _defuse(case.body)
    if case.query:
        query = dict(case.query)
        for name, value in query.items():
            if name == "fal_webhook" and value is not None:
                query[name] = SAFE_WEBHOOK if ":" in str(value) else value
        case.query = query


def operations(spec: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def test_live_spec_matches(visus):
    live = httpx.get(f"{visus.url}/openapi.json", timeout=30).json()
    assert operations(live) == operations(SPEC)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_documented_responses(case, visus):
    make_safe(case)
    case.call_and_validate(base_url=visus.url, headers=dict(visus.headers), checks=CHECKS)


def test_model_replica_survives_the_fuzzing(visus):
    with visus.client() as http:
        r = http.post("/fal-ai/sam2/image", json={"image_url": png_data_uri(32, 32),
                                                  "prompts": [{"x": 5, "y": 5, "label": 1}]})
        assert r.status_code == 200, r.text
        assert http.get(r.json()["image"]["url"]).status_code == 200
        assert http.get("/readyz").status_code == 200
