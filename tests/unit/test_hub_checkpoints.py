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
    for name in ("evf-sam2-multitask", "grounding-dino-tiny", "temporal-controlnet-depth-svd-v1",
                 "stable-video-diffusion-img2vid-xt"):
        checkpoint = HUB_CHECKPOINTS[name]
        folder = root / checkpoint.repo / "resolve" / "main" / checkpoint.subfolder
        for filename in checkpoint.files:
            (folder / filename).parent.mkdir(parents=True, exist_ok=True)
            (folder / filename).write_bytes(f"{name}/{filename}".encode())
    # evf-sam2-multitask has its optional added_tokens.json; grounding-dino-tiny lacks tokenizer.json.
    (root / "YxZhang/evf-sam2-multitask/resolve/main/added_tokens.json").write_text('{"[semantic]": 64002}')
    class Recording(SimpleHTTPRequestHandler):
        def do_GET(self):
            seen_auth.append(self.headers.get("Authorization"))
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Recording, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


seen_auth: list = []


@pytest.mark.parametrize("name, optional_present", [
    ("evf-sam2-multitask", True), ("grounding-dino-tiny", False),
    ("temporal-controlnet-depth-svd-v1", False),  # files from the repo's controlnet/ land in the folder itself
    ("stable-video-diffusion-img2vid-xt", False),  # diffusers' sub-folders are kept
])
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


def test_gated_repositories_get_the_hf_token(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    seen_auth.clear()
    out = tmp_path / "cn"
    assert main(["models", "download", "temporal-controlnet-depth-svd-v1", "--url", mirror, "--output", str(out)]) == 0
    assert seen_auth and set(seen_auth) == {"Bearer hf_secret"}
    assert (out / "config.json").exists() and (out / "diffusion_pytorch_model.safetensors").exists()


def test_sharded_sa2va_download_loads(tmp_path):
    """Sa2VA-8B's layout: shards named by model.safetensors.index.json; the downloaded folder loads."""
    import json

    from safetensors.torch import load_file, save_file

    from models.sa2va import Sa2VA
    from models.sa2va_tiny import write_tiny_sa2va

    tiny = write_tiny_sa2va(tmp_path / "tiny", "internlm2")
    checkpoint = HUB_CHECKPOINTS["Sa2VA-8B"]
    folder = tmp_path / "mirror" / checkpoint.repo / "resolve" / "main"
    folder.mkdir(parents=True)
    for filename in checkpoint.files:
        (folder / filename).write_bytes((tiny / filename).read_bytes())
    state = load_file(str(tiny / "model.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(folder / name))
    weight_map = {k: name for name, part in shards.items() for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "mirror")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "models" / "sa2va" / "Sa2VA-8B"
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["models", "download", "Sa2VA-8B", "--url", url, "--output", str(out)]) == 0
    finally:
        server.shutdown()
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(shards)
    Sa2VA.from_pretrained(out, with_sam=False)
