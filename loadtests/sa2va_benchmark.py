"""Benchmark Sa2VA's answer streaming: time to first token and tokens/s, served vs direct model calls.

    .venv/bin/python loadtests/sa2va_benchmark.py            # full run (about 3 minutes on 2 cores); rewrites BENCHMARKS.md
    .venv/bin/python loadtests/sa2va_benchmark.py --quick    # smoke run; prints only

Checkpoint: the tiny Sa2VA-8B layout (InternLM2 language model) written with a fully random language
model (`write_tiny_sa2va(answer_with_seg=False)`), so that every answer runs to `max_new_tokens`
(128) and the rate is measured over many tokens. Request: a 256x192 PNG (7 tiles of 448 px after
InternVL tiling, 1792 image tokens) and a short question. In ONE run it:

1. starts a Ray cluster of its own (its own ports, loopback only) serving only `fal-ai/sa2va/8b/image`:
   one replica reserving one CPU (so one torch thread);
2. alternates, `pairs` times, one direct call in this process on one torch thread (decode the PNG,
   tile, prefill, greedy decoding through `Sa2VA.stream`) and the same request as a streaming run
   (`POST /fal-ai/sa2va/8b/image/stream`, SSE `data` events: the first token at once, then tokens
   as they come, at most one event per 10 ms): time to first token
   (from the request to the first token's event) and tokens/s after it, both ways;
3. prints a markdown section and rewrites the one between the `bench:sa2va` markers in BENCHMARKS.md.

Not measured here: the real-size Sa2VA-8B in bf16 on a GPU (no GPU machine was lent to this work).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtests.benchmark import (  # noqa: E402  (needs REPO on sys.path)
    API_KEY,
    benchmark_arguments,
    free_port,
    isolate_ray_ports,
    loadavg,
    machine,
    pct,
    output_file,
    start_ray,
    write_section,
)

MARK_START = "<!-- bench:sa2va:start -->"
MARK_END = "<!-- bench:sa2va:end -->"
AFTER = "<!-- bench:svd:end -->"
ENDPOINT = "fal-ai/sa2va/8b/image"
PROMPT = "Describe the picture."
MAX_NEW_TOKENS = 128
# Ray Serve's per-host fixed ranges, away from the defaults and from the other benchmarks'.
DIRECT_INGRESS_HTTP = (40000, 41000)
DIRECT_INGRESS_GRPC = (50000, 51000)
INTRO = f"""## Sa2VA answer streaming

`make bench-sa2va` (`loadtests/sa2va_benchmark.py`): time to first token and tokens/s of
`{ENDPOINT}`'s streaming run against direct model calls, alternated in one run.

{MARK_START}
{MARK_END}
"""


def picture() -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.zeros((192, 256, 3), np.uint8)
    pixels[:] = np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None]
    pixels[48:140, 64:160] = (220, 40, 40)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def deploy(checkpoint: Path, home: Path, port: int):
    from ray import serve

    from serve.app_builder import build_app
    from serve.config import DEFAULT_CONFIG_PATH, load_config

    base = load_config(DEFAULT_CONFIG_PATH)
    endpoint = next(e for e in base.endpoints if e.id == ENDPOINT).model_dump()
    endpoint["model"] = {**endpoint["model"], "checkpoint": str(checkpoint), "device": "cpu",
                         "max_new_tokens": MAX_NEW_TOKENS}
    endpoint["options"] = {**endpoint["options"], "num_replicas": 1, "autoscaling_config": None,
                           "num_cpus": 1, "num_gpus": 0}
    config = load_config(DEFAULT_CONFIG_PATH, home=str(home), port=port, host="127.0.0.1", api_keys=[API_KEY],
                         endpoints=[endpoint], queue={"actor_name": "visus-sa2va-bench-queue"},
                         limits={"sync_timeout_s": 300}).with_secrets()
    serve.run(build_app(config, has_gpu=False), name=config.app_name, route_prefix="/", blocking=False)
    return config


def direct_call(model, png: bytes) -> dict:
    from models.image_io import decode_image
    from models.sa2va import Generation

    started = time.perf_counter()
    prompt = model.prepare(PROMPT, image=decode_image(png))
    first, tokens = None, 0
    for item in model.stream(prompt, MAX_NEW_TOKENS):
        if isinstance(item, Generation):
            break
        tokens += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft": first - started, "rate": (tokens - 1) / (end - first), "tokens": tokens, "total": end - started}


def served_call(client, body: bytes) -> dict:
    started = time.perf_counter()
    first = last = None
    tokens = None
    with client.stream("POST", f"/{ENDPOINT}/stream", content=body,
                       headers={"Authorization": f"Key {API_KEY}", "Content-Type": "application/json"}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"served call failed: {r.status_code} {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            now = time.perf_counter()
            if "data" in event:
                first = first or now
                last = now
            for log in event.get("logs", []):
                if log["message"].startswith("answered in "):
                    tokens = int(log["message"].split()[2])
    end = time.perf_counter()
    if first is None or tokens is None:
        raise RuntimeError("the streaming run sent no tokens")
    return {"ttft": first - started, "rate": (tokens - 1) / (last - first), "tokens": tokens, "total": end - started}


def markdown(direct: list[dict], served: list[dict], meta: dict) -> str:
    def row(name: str, runs: list[dict]) -> str:
        ttft = [r["ttft"] * 1000 for r in runs]
        rate = [r["rate"] for r in runs]
        total = [r["total"] * 1000 for r in runs]
        return (f"| {name} | {pct(ttft, 50):.0f} | {pct(ttft, 90):.0f} | {pct(rate, 50):.0f} | "
                f"{pct(total, 50):.0f} |")

    d_rate, s_rate = pct([r["rate"] for r in direct], 50), pct([r["rate"] for r in served], 50)
    d_ttft, s_ttft = pct([r["ttft"] for r in direct], 50), pct([r["ttft"] for r in served], 50)
    added = sorted((s["ttft"] - d["ttft"]) * 1000 for s, d in zip(served, direct))
    return f"""Measured {meta['date']} on {meta['machine']}; load average before/after {meta['load']}.
{meta['pairs']} alternated pairs, each answer {MAX_NEW_TOKENS} tokens, one torch thread on both sides.

| path | TTFT p50 (ms) | TTFT p90 (ms) | tokens/s after the first (p50) | whole answer p50 (ms) |
|---|---:|---:|---:|---:|
{row("direct `Sa2VA.stream`", direct)}
{row("served `/stream` (SSE)", served)}

- Served / direct: tokens/s **{s_rate / d_rate:.2f}x**, time to first token **{s_ttft / d_ttft:.2f}x**
  (added p50 {pct(added, 50):.0f} ms, p90 {pct(added, 90):.0f} ms: the data URI upload, the gateway's
  validation, the replica's image decode and tiling run before the first token on both paths, so
  the difference is the platform's share).
- The tiny model makes about a thousand tokens a second; an event through Ray's streaming handle
  and the SSE response costs about a millisecond, so the replica sends tokens that come faster
  than one per 10 ms together (`STREAM_INTERVAL_S`). A real 8B model makes tens of tokens a second
  on a GPU: there every token is its own event.
- Not measured: the real-size 8B architecture in bf16 on a GPU (no GPU machine was lent).
"""


def main(argv: list[str] | None = None) -> int:
    args = benchmark_arguments(__doc__.split("\n\n")[0], "a few pairs; prints only", "checkpoint, home").parse_args(argv)
    pairs = 5 if args.quick else 30
    output = output_file(args)
    load_before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="visus-sa2va-bench-"))

    import httpx
    import torch

    from models.sa2va import Sa2VA
    from models.sa2va_tiny import write_tiny_sa2va

    torch.set_num_threads(1)
    checkpoint = write_tiny_sa2va(work / "models", "internlm2", answer_with_seg=False)
    model = Sa2VA.from_pretrained(checkpoint)
    png = picture()
    body = json.dumps({"prompt": PROMPT, "image_url": "data:image/png;base64," + base64.b64encode(png).decode()})

    isolate_ray_ports(DIRECT_INGRESS_HTTP, DIRECT_INGRESS_GRPC)
    port = free_port()
    start_ray(port)
    import ray

    try:
        deploy(checkpoint, work / "home", port)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300, trust_env=False)
        deadline = time.time() + 300
        while True:  # ready and warm: one full served answer, then one direct
            try:
                served_call(client, body.encode())
                break
            except (httpx.HTTPError, RuntimeError):
                if time.time() > deadline:
                    raise
                time.sleep(2)
        direct_call(model, png)
        direct, served = [], []
        for i in range(pairs):
            direct.append(direct_call(model, png))
            served.append(served_call(client, body.encode()))
            print(f"pair {i + 1}/{pairs}: direct {direct[-1]['ttft'] * 1000:.0f} ms / {direct[-1]['rate']:.0f} tok/s, "
                  f"served {served[-1]['ttft'] * 1000:.0f} ms / {served[-1]['rate']:.0f} tok/s", flush=True)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "load": f"{load_before} / {loadavg()}",
            "pairs": pairs}
    text = markdown(direct, served, meta)
    print(text)
    if output is not None:
        write_section(output, text, MARK_START, MARK_END, intro=INTRO, after=AFTER)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
