"""The official JavaScript client (`@fal-ai/client`, pinned in tests/js/package.json) against Visus.

Covers what only the JS client does its own way: realtime through the global `WebSocket` (Node 20
needs `--experimental-websocket`), msgpack with `Uint8Array` fields, errors through `onError`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import png_bytes

pytestmark = pytest.mark.integration

JS_DIR = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture(scope="module")
def node():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed")
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, capture_output=True,
                       timeout=300)
    return shutil.which("node")


def test_realtime_with_the_js_client(visus, node, tmp_path):
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes(72, 64))
    env = {**os.environ, "VISUS_URL": visus.url, "VISUS_KEY": visus.key, "PNG_PATH": str(image)}
    out = subprocess.run([node, "--experimental-websocket", "--no-warnings", "realtime.mjs"], cwd=JS_DIR, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["tokenApp"] == "fal-ai/sam2/image/realtime"
    assert summary["results"] == [{"width": 72, "url": "data:image/png;base64,"}]
    # x-fal-error frames reach onError as ApiError(status 400) with "<CODE>: <reason>".
    assert len(summary["errors"]) == 1 and summary["errors"][0]["status"] == 400
    assert summary["errors"][0]["message"].startswith("BAD_REQUEST: ") and "label" in summary["errors"][0]["message"]
