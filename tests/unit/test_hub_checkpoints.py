"""`visus models download` for checkpoint folders: every file from a Hub-shaped mirror on loopback."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from models.hub_checkpoints import HUB_CHECKPOINTS
from serve.cli import main


@pytest.fixture
def mirror(tmp_path):
    """A static server laid out like the Hub: /<repo>/resolve/main/<file>."""
    root = tmp_path / "mirror"
    for name in ("evf-sam2-multitask", "grounding-dino-tiny"):
        checkpoint = HUB_CHECKPOINTS[name]
        folder = root / checkpoint.repo / "resolve" / "main"
        folder.mkdir(parents=True)
        for filename in checkpoint.files:
            (folder / filename).write_bytes(f"{name}/{filename}".encode())
    # evf-sam2-multitask has its optional added_tokens.json; grounding-dino-tiny lacks tokenizer.json.
    (root / "YxZhang/evf-sam2-multitask/resolve/main/added_tokens.json").write_text('{"[semantic]": 64002}')
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("name, optional_present", [("evf-sam2-multitask", True), ("grounding-dino-tiny", False)])
def test_folder_download_into_the_model_dir(mirror, tmp_path, name, optional_present, capsys):
    checkpoint = HUB_CHECKPOINTS[name]
    models = tmp_path / "models"
    assert main(["models", "download", name, "--url", mirror, "--output", str(models / checkpoint.family / name)]) == 0
    folder = models / checkpoint.family / name
    assert capsys.readouterr().out.strip() == str(folder)
    for filename in checkpoint.files:
        assert (folder / filename).read_bytes() == f"{name}/{filename}".encode()
    for filename in checkpoint.optional:
        assert (folder / filename).exists() == optional_present
        assert not (folder / f"{filename}.part").exists()


def test_unknown_name_lists_the_folders_too(capsys):
    assert main(["models", "download", "nope"]) == 2
    assert "evf-sam2-multitask" in capsys.readouterr().err
