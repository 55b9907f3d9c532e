"""The README's endpoint examples (curl and the official Python client) run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def endpoint_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_readme_has_curl_and_python_examples():
    assert any("curl" in block for block in endpoint_blocks("bash"))
    assert len(endpoint_blocks("python")) == len(PYTHON_EXPECTED), "a new Python example needs a case below"


def test_curl_examples_run(visus):
    env = {**os.environ, "VISUS_PORT": visus.url.rsplit(":", 1)[1], "VISUS_API_KEYS": visus.key}
    script = "set -euo pipefail\n" + "\n".join(endpoint_blocks("bash"))
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('"image"') >= 2 and '"status":"' in out.stdout
    assert "data: " in out.stdout and '"detail"' not in out.stdout
    assert out.stdout.count('"video"') >= 2 and "video/mp4" in out.stdout
    assert "image/jpeg" in out.stdout and "x-remaining-credits" in out.stdout.lower()  # Segmind
    assert '"seed":42' in out.stdout.replace(" ", "")  # SVD
    assert "mask_0.png" in out.stdout and "mask_0.mp4" in out.stdout and '"delta"' in out.stdout  # Sa2VA


# What each Python block (in README order) must print.
PYTHON_EXPECTED = [["/files/", "'image'"], ["/files/", "masks_rle"], ["/files/", "mask.png"], ["image/jpeg"],
                   ["/files/", "video.mp4", "step 4/4"], ["[SEG]", "mask_0.png"], ["[SEG]", "mask_0.mp4", "range 1/"],
                   ["data:image/png;base64", "/files/"]]


@pytest.mark.parametrize("index, expected", list(enumerate(PYTHON_EXPECTED)))
def test_python_client_examples_run(visus, index, expected):
    setup = endpoint_blocks("bash")[0]
    env = {**os.environ, "VISUS_PORT": visus.url.rsplit(":", 1)[1], "VISUS_API_KEYS": visus.key,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = "\n".join(["set -euo pipefail", setup, f"{sys.executable} - <<'PY'", endpoint_blocks("python")[index], "PY"])
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert all(text in out.stdout for text in expected), out.stdout
