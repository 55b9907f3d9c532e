"""The `visus` command: `up` (deploy on a local Ray cluster), `models tiny|download`, `config render|show`.

`config render --kuberay` writes the KubeRay manifests (serve/kuberay.py, serve/k8s_tree.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from serve.config import VisusConfig, load_config
from serve.kuberay import OVERLAYS


def _config(args) -> VisusConfig:
    return load_config(args.config)


def write_tiny_models(model_dir: Path) -> list[Path]:
    """Tiny random checkpoints in the official layouts, for every model the default config serves."""
    from models.evf_sam2_tiny import write_tiny_evf_sam2
    from models.grounding_dino_tiny import write_tiny_grounding_dino
    from models.sa2va_tiny import write_tiny_sa2va
    from models.svd_tiny import write_tiny_svd, write_tiny_svd_controlnet
    from models.tiny import write_tiny_sam2

    return [write_tiny_sam2(model_dir / "sam2"),
            write_tiny_evf_sam2(model_dir / "evf_sam2", multitask=True, name="evf-sam2-multitask"),
            write_tiny_grounding_dino(model_dir / "grounding_dino" / "grounding-dino-tiny"),
            write_tiny_svd(model_dir / "svd", name="svd-tiny"),
            write_tiny_svd_controlnet(model_dir / "svd", name="svd-controlnet-tiny"),
            write_tiny_sa2va(model_dir / "sa2va", "internlm2"),
            write_tiny_sa2va(model_dir / "sa2va", "qwen2")]


def render_serve_config(config: VisusConfig, has_gpu: bool) -> dict:
    """A `serve run` / `serve deploy` config file that builds the same application as `visus up`.

    Options in the file override the builder's, so GPU requests are written only for GPU clusters:
    a CPU cluster could never place a replica that asks for one.
    """
    from serve.gateway.ingress import GATEWAY_NAME

    # Secrets stay out of rendered files: replicas read VISUS_API_KEYS / VISUS_SECRET_KEY or .visus/.
    inline = config.model_dump(mode="json", exclude={"api_keys", "secret_key"}, exclude_none=True)
    deployments = [{"name": GATEWAY_NAME, **config.gateway.ray_options(has_gpu=False)}]
    for name, options in config.model_deployments():
        deployments.append({"name": name, **options.ray_options(has_gpu=has_gpu)})
    for d in deployments:  # runtime_env is set by the builder; config files keep the resource shape only
        d["ray_actor_options"].pop("runtime_env", None)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.host, "port": config.port},
        "applications": [{
            "name": config.app_name,
            "route_prefix": "/",
            "import_path": "serve.app_builder:app_builder",
            "args": {"config": inline},
            "deployments": deployments,
        }],
    }


def cmd_config_render_kuberay(args) -> int:
    """The KubeRay RayService of one overlay, or (`--k8s-dir`) the whole kustomize tree."""
    from serve import k8s_tree, kuberay

    # The config file alone: VISUS_* in the renderer's environment must not leak into manifests.
    config = kuberay.load_file_config(args.config)
    if args.k8s_dir:
        source = args.config or "serve/default_config.yaml"
        for path in k8s_tree.write_tree(Path(args.k8s_dir), k8s_tree.render_tree(config, source)):
            print(path, file=sys.stderr)
        return 0
    return _write_output(kuberay.dump_yaml(kuberay.render_rayservice(config, args.overlay)), args.output)


def cmd_config_render(args) -> int:
    if args.kuberay:
        return cmd_config_render_kuberay(args)
    config = _config(args)
    if args.gpu == "auto":
        from serve.app_builder import detect_gpu

        has_gpu = detect_gpu()
    else:
        has_gpu = args.gpu == "yes"
    return _write_output(yaml.safe_dump(render_serve_config(config, has_gpu), sort_keys=False), args.output)


def _write_output(text: str, output: str | None) -> int:
    if output:
        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_config_show(args) -> int:
    sys.stdout.write(yaml.safe_dump(_config(args).model_dump(mode="json", exclude={"secret_key"}), sort_keys=False))
    return 0


def cmd_models_tiny(args) -> int:
    config = _config(args)
    out = Path(args.output) if args.output else config.resolved_model_dir
    for path in write_tiny_models(out):
        print(path)
    if args.hiera_t_256:
        from models.tiny import write_random_sam2

        print(write_random_sam2(out / "sam2"))
    return 0


def cmd_models_download(args) -> int:
    from models.download import download
    from models.hub_checkpoints import HUB_CHECKPOINTS, HUB_URL, download_checkpoint_dir
    from models.sam2_checkpoints import OFFICIAL_SAM2

    config = _config(args)
    hub = HUB_CHECKPOINTS.get(args.name)
    if hub is not None:  # a checkpoint folder (EVF-SAM2, Grounding DINO)
        out = Path(args.output) if args.output else config.resolved_model_dir / hub.family / hub.name
        print(download_checkpoint_dir(hub, out, base_url=args.url or HUB_URL))
        return 0
    info = OFFICIAL_SAM2.get(args.name)
    if info is None:
        known = ", ".join([*OFFICIAL_SAM2, *HUB_CHECKPOINTS])
        print(f"unknown checkpoint {args.name!r}; choose from: {known}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else config.resolved_model_dir / "sam2"
    url = args.url or info.url
    path = download(url, out / f"{args.name}.pt", sha256=args.sha256 or info.sha256)
    print(path)
    return 0


def _wait_ready(url: str, key: str, timeout_s: float = 300.0) -> None:
    import httpx

    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", headers={"Authorization": f"Key {key}"}, timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(1)
    raise RuntimeError(f"Visus did not become ready at {url}: {last}")


def cmd_up(args) -> int:
    from serve.ray_env import apply_ray_env_defaults

    apply_ray_env_defaults()
    import ray
    from ray import serve

    from serve.app_builder import build_app

    config = _config(args)
    if not config.model_dir:
        write_tiny_models(config.resolved_model_dir)
    config = config.with_secrets()
    ray.init(address=args.address, namespace=config.queue.namespace, log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=config.app_name, route_prefix="/", blocking=False)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = config.public_url or f"http://{host}:{config.port}"
    key = config.api_keys[0]
    _wait_ready(url, key)
    print(banner(url, key, config))
    return 0


def banner(url: str, key: str, config: VisusConfig) -> str:
    endpoints = "\n".join(f"    {e.id}" if e.protocol == "fal" else f"    POST /v1/{e.id} (Segmind, x-api-key)"
                          for e in config.enabled_endpoints())
    host_port = url.split("://", 1)[1]
    return f"""
Visus is up.
  URL:      {url}
  API key:  {key}
  Docs:     {url}/docs
  Endpoints:
{endpoints}

Try it (a 64x64 PNG inline as a data URI, one point prompt):

  IMG="data:image/png;base64,$(python3 -c "import base64,io;from PIL import Image;b=io.BytesIO();Image.new('RGB',(64,64),(200,60,40)).save(b,'PNG');print(base64.b64encode(b.getvalue()).decode())")"
  curl -s {url}/fal-ai/sam2/image -H "Authorization: Key {key}" -H "Content-Type: application/json" \\
    -d "{{\\"image_url\\": \\"$IMG\\", \\"prompts\\": [{{\\"x\\": 32, \\"y\\": 32, \\"label\\": 1}}]}}"

Or with the official Python client (pip install fal-client):

  import fal_client, fal_client.client as fc
  fc.RUN_URL_FORMAT = "{url}/"; fc.QUEUE_URL_FORMAT = "{url}/queue/"
  fc.REST_URL = "{url}/rest"; fc.CDN_URL = "{url}/cdn"; fc.REALTIME_URL_FORMAT = "ws://{host_port}/"
  client = fal_client.SyncClient(key="{key}")

Stop with: make stop
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visus", description=__doc__)
    parser.add_argument("--config", default=os.environ.get("VISUS_CONFIG"), help="Visus YAML config file.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="deploy every endpoint on a running local Ray cluster and print the URL")
    up.add_argument("--address", default="auto", help="Ray cluster address (default: the running local one).")
    up.set_defaults(func=cmd_up)

    models = sub.add_parser("models", help="checkpoints").add_subparsers(dest="models_command", required=True)
    tiny = models.add_parser("tiny", help="write tiny random checkpoints in the official layouts")
    tiny.add_argument("--output", help="folder (default: the configured model dir)")
    tiny.add_argument("--hiera-t-256", action="store_true", help="also a random sam2.1_hiera_t at image_size 256")
    tiny.set_defaults(func=cmd_models_tiny)
    dl = models.add_parser("download", help="download an official checkpoint (resumable, checksummed)")
    dl.add_argument("name", help="sam2.1_hiera_tiny | sam2.1_hiera_small | sam2.1_hiera_base_plus | "
                                 "sam2.1_hiera_large | evf-sam2 | evf-sam2-multitask | grounding-dino-tiny | "
                                 "grounding-dino-base | stable-video-diffusion-img2vid(-xt) | "
                                 "temporal-controlnet-depth-svd-v1 | Sa2VA-1B | Sa2VA-4B | Sa2VA-8B "
                                 "(gated Hub repositories: set HF_TOKEN)")
    dl.add_argument("--output", help="folder (default: <model dir>/sam2, or <model dir>/<family>/<name> for "
                                     "checkpoint folders)")
    dl.add_argument("--url", help="download from this URL instead (a mirror; for folders: the Hub base URL)")
    dl.add_argument("--sha256", help="expected sha256 of the file")
    dl.set_defaults(func=cmd_models_download)

    cfg = sub.add_parser("config", help="configuration").add_subparsers(dest="config_command", required=True)
    render = cfg.add_parser("render", help="write the `serve run` / `serve deploy` config file")
    render.add_argument("-o", "--output", help="file (default: stdout)")
    render.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto",
                        help="write num_gpus requests (default: when this machine has a GPU)")
    render.add_argument("--kuberay", action="store_true",
                        help="write a KubeRay RayService (ray.io/v1) instead; its serveConfigV2 is this config file")
    render.add_argument("--overlay", choices=sorted(OVERLAYS), default="gpu",
                        help="with --kuberay: the cluster shape (default: gpu)")
    render.add_argument("--k8s-dir", help="with --kuberay: write the whole kustomize tree (base + overlays) here")
    render.set_defaults(func=cmd_config_render)
    show = cfg.add_parser("show", help="print the effective configuration (env overrides applied)")
    show.set_defaults(func=cmd_config_show)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
