"""Benchmark the text-prompted endpoints: `fal-ai/evf-sam` (EVF-SAM2) and Segmind `POST /v1/sam-v2-image`
(Grounding DINO + SAM 2), served through Visus, against the same work done by direct model calls.

    .venv/bin/python loadtests/text_seg_benchmark.py            # full run (about 5 minutes on 2 cores); rewrites BENCHMARKS.md
    .venv/bin/python loadtests/text_seg_benchmark.py --quick    # smoke run, every phase shortened; prints only

Checkpoints: the tiny random ones `serve.cli.write_tiny_models` writes (EVF-SAM2 tiny multitask, Grounding
DINO tiny, SAM 2 micro), the ones `visus up` serves when no model_dir is set. Request: one 256x192 PNG (the
Locust test picture, rows 32-223: a red square on a gradient; a 256x256 picture makes the tiny Grounding DINO
fail, see `bench_image_png`) and the prompt "red square". In ONE run it:

1. starts a Ray cluster of its own (its own GCS, HAProxy stats/metrics, fallback-proxy and direct-ingress
   ports, so it can share the box with another cluster; loopback only) and deploys a Visus stack serving
   only `fal-ai/evf-sam` and `sam-v2-image` (whose `grounding_dino` deployment evf-sam names as its
   worker): one replica each, reserving one CPU (so one torch thread), the default max_ongoing_requests;
2. per endpoint, measures in this process on one torch thread, while the stack sits idle, the replica's
   per-request work called directly and sequentially (evf-sam: decode the PNG, `EvfSam2.predict`,
   `postprocess`, `compose`, encode the PNG; sam-v2-image: decode, `GroundingDino.detect`,
   `Sam2ImageSegmenter.segment` on the boxes, render the overlay, encode the JPEG): calls/s, p50/p99;
3. alternates one direct call and the same request served (one sync HTTP client, keep-alive), `pairs`
   times: the served latency from one sequential client and the latency the platform adds, as per-pair
   differences (both halves of a pair see the same state of the box);
4. runs Locust as a subprocess (never in this process: Locust's gevent patching and Ray crash together)
   with a locustfile generated into the work folder (its users reuse `loadtests/locustfile.py`'s base
   class and exact per-request samples): 1 user, then as many users as the replica's
   max_ongoing_requests; served requests/s (steady state) and latency, and where the CPU went;
5. prints a markdown section and rewrites the one between the `bench:text-seg` markers in BENCHMARKS.md.

Helpers (Ray start, Locust runner, CPU meter, percentiles, the section writer) are loadtests/benchmark.py's.
Only this run's own cluster is shut down at the end.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtests import benchmark as bench  # noqa: E402  (needs REPO on sys.path)
from loadtests.benchmark import (  # noqa: E402
    API_KEY,
    CpuMeter,
    Phase,
    free_port,
    loadavg,
    locust_image_png,
    machine,
    pct,
    run_locust,
    start_ray,
)
from loadtests.benchmark import f as fmt  # noqa: E402

MARK_START = "<!-- bench:text-seg:start -->"
MARK_END = "<!-- bench:text-seg:end -->"
VIDEO_MARK_END = "<!-- bench:sam2-video:end -->"

EVF = "fal-ai/evf-sam"
SEGMIND = "sam-v2-image"
PROMPT = "red square"
IMAGE_ROWS = (32, 224)  # the rows of the 256x256 Locust picture kept: 256x192, the red square inside
QUEUE_ACTOR = "visus-text-seg-bench-queue"
CREDITS = 1e12  # Segmind credits of the bench key: never the limit here (the default is 1000 per key)

# Ray Serve's per-host fixed ranges, moved away from the defaults and from video_benchmark.py's.
DIRECT_INGRESS_HTTP = (36000, 37000)
DIRECT_INGRESS_GRPC = (46000, 47000)


@dataclass(frozen=True)
class Plan:
    direct_s: float  # seconds of sequential direct calls per endpoint
    pairs: dict  # endpoint -> direct/served pairs
    sync1_s: int  # Locust phase with 1 user
    load_s: int  # Locust phase with max_ongoing_requests users
    warmup_s: float  # left out of each Locust phase's steady-state figures


FULL = Plan(direct_s=20, pairs={EVF: 60, SEGMIND: 300}, sync1_s=20, load_s=40, warmup_s=3.0)
QUICK = Plan(direct_s=4, pairs={EVF: 8, SEGMIND: 40}, sync1_s=6, load_s=8, warmup_s=1.0)


class Meter(CpuMeter):
    """benchmark.py's CPU meter, with the two model replicas, HAProxy and the credit ledger told apart."""

    LABELS = (("bin/locust", "locust"), ("ServeReplica:visus:gateway", "gateway"),
              ("ServeReplica:visus:fal_ai__evf_sam", "evf-sam replica"),
              ("ServeReplica:visus:grounding_dino", "grounding_dino replica"),
              ("ServeReplica:", "other replica"), ("haproxy", "proxy"), ("ProxyActor", "proxy"),
              ("ServeController", "controller"), ("JobQueue", "queue actor"), ("CreditLedger", "credit ledger"),
              ("gcs_server", "ray daemons"), ("raylet", "ray daemons"), ("ray::", "ray other"),
              ("ray/", "ray daemons"))


# Everything but the model replicas, the load generator and this driver.
PLATFORM = ("gateway", "proxy", "queue actor", "credit ledger", "controller", "ray daemons", "ray other")
REPLICA = {EVF: "evf-sam replica", SEGMIND: "grounding_dino replica"}


# ---------------------------------------------------------------------------------------- set-up
def bench_image_png() -> bytes:
    """The Locust test picture cut to 256x192 (rows 32-223), as PNG.

    Not the square original: on a 256x256 picture the tiny Grounding DINO (resized to 64x64) ends with a
    1x1 feature map in its extra level, and GroupNorm(32, 32) over 1 value per group raises, so
    sam-v2-image answers 500. 256x192 (64x85 after resizing) is the README's test-picture shape.
    """
    from PIL import Image

    from models.image_io import decode_image

    pixels = decode_image(locust_image_png())[IMAGE_ROWS[0]:IMAGE_ROWS[1]]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def endpoint_configs(model_dir: Path) -> list[dict]:
    """The default config's evf-sam and sam-v2-image endpoints: CPU, one replica of one CPU each."""
    from serve.config import DEFAULT_CONFIG_PATH, load_config

    fixed = {"num_replicas": 1, "autoscaling_config": None, "num_cpus": 1, "num_gpus": 0}
    out = []
    for endpoint in load_config(DEFAULT_CONFIG_PATH, model_dir=str(model_dir)).endpoints:
        if endpoint.id in (EVF, SEGMIND):
            e = endpoint.model_dump()
            e["model"] = {**e["model"], "device": "cpu"}
            e["options"] = {**e["options"], **fixed}
            out.append(e)
    return out


def deploy(model_dir: Path, home: Path, port: int):
    from ray import serve

    from serve.app_builder import build_app
    from serve.config import DEFAULT_CONFIG_PATH, load_config

    config = load_config(DEFAULT_CONFIG_PATH, home=str(home), port=port, host="127.0.0.1", api_keys=[API_KEY],
                         model_dir=str(model_dir), endpoints=endpoint_configs(model_dir),
                         queue={"actor_name": QUEUE_ACTOR}, segmind={"default_credits": CREDITS},
                         limits={"sync_timeout_s": 300}).with_secrets()
    serve.run(build_app(config, has_gpu=False), name=config.app_name, route_prefix="/", blocking=False)
    return config


def undeploy(config) -> None:
    import ray
    from ray import serve

    serve.delete(config.app_name)
    for name in (config.queue.actor_name, "visus-segmind-credits"):
        try:
            ray.kill(ray.get_actor(name, namespace=config.queue.namespace), no_restart=True)
        except ValueError:
            pass


# ---------------------------------------------------------------------------------------- requests
def request_bodies(png: bytes) -> dict:
    b64 = base64.b64encode(png).decode()
    return {EVF: {"image_url": "data:image/png;base64," + b64, "prompt": PROMPT},
            SEGMIND: {"image": b64, "prompt": PROMPT}}


def http_client(url: str):
    import httpx

    # trust_env=False: loopback only, never through a proxy from the environment.
    return httpx.Client(base_url=url, timeout=300, trust_env=False)


class Served:
    """One sync request per call over a keep-alive connection: fal's Authorization: Key, Segmind's x-api-key."""

    def __init__(self, client, bodies: dict):
        self.client = client
        self.payload = {k: json.dumps(v).encode() for k, v in bodies.items()}

    def send(self, endpoint: str):
        if endpoint == EVF:
            r = self.client.post(f"/{EVF}", content=self.payload[EVF],
                                 headers={"Authorization": f"Key {API_KEY}", "Content-Type": "application/json"})
        else:
            r = self.client.post(f"/v1/{SEGMIND}", content=self.payload[SEGMIND],
                                 headers={"x-api-key": API_KEY, "Content-Type": "application/json"})
        if r.status_code != 200:
            raise RuntimeError(f"{endpoint}: HTTP {r.status_code}: {r.text[:500]}")
        return r

    def output(self, endpoint: str) -> bytes:
        """The output image's bytes: evf-sam's file (fetched from /files/), Segmind's JPEG body."""
        r = self.send(endpoint)
        if endpoint == SEGMIND:
            return r.content
        url = r.json()["image"]["url"]
        path = "/" + url.split("/", 3)[3] if url.startswith("http") else url
        got = self.client.get(path)
        got.raise_for_status()
        return got.content


def wait_ready(client, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if client.get("/readyz", headers={"Authorization": f"Key {API_KEY}"}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("Visus did not become ready")


# ---------------------------------------------------------------------------------------- direct
class Direct:
    """The replicas' per-request model work, in this process on one torch thread."""

    def __init__(self, model_dir: Path, png: bytes):
        import torch

        from deployments.model_settings import sam2_build_kwargs
        from models.evf_sam2 import EvfSam2
        from models.grounding_dino import GroundingDino
        from models.sam2_image import Sam2ImageSegmenter

        torch.set_num_threads(1)
        self.png = png
        models = {e["id"]: e["model"] for e in endpoint_configs(model_dir)}
        expand = {"${model_dir}": str(model_dir)}

        def path(value: str) -> str:
            for k, v in expand.items():
                value = value.replace(k, v)
            return value

        evf, grounded = models[EVF], models[SEGMIND]
        self.evf = EvfSam2.from_pretrained(path(evf["checkpoint"]), device="cpu", dtype="float32")
        self.detector = GroundingDino.from_pretrained(path(grounded["grounding_dino"]), device="cpu")
        self.segmenter = Sam2ImageSegmenter.from_checkpoint(path(grounded["checkpoint"]), device="cpu",
                                                            **sam2_build_kwargs(grounded))
        self.box_threshold = float(grounded.get("box_threshold", 0.35))
        self.text_threshold = float(grounded.get("text_threshold", 0.25))
        self.max_boxes = int(grounded.get("max_boxes", 10))
        self.boxes = 0
        self.mask_pixels = {}
        self.calls = {EVF: self.evf_sam, SEGMIND: self.sam_v2_image}
        for call in self.calls.values():  # warm-up: first calls allocate and pick kernels
            for _ in range(3):
                call()

    def evf_sam(self) -> bytes:
        """deployments/evf_sam.py with the defaults: no negative prompt, no post-processing options, mask_only."""
        from models.image_io import decode_image, encode_image
        from models.mask_postprocess import compose, postprocess

        image = decode_image(self.png)
        mask = self.evf.predict(image, PROMPT, semantic=False).mask
        matte = postprocess(mask)
        self.mask_pixels[EVF] = int((matte > 127).sum())
        return encode_image(compose(image, matte, True), "png")[0]

    def sam_v2_image(self) -> bytes:
        """deployments/grounded_sam2.py with a prompt and the defaults: boxes, one mask, overlay, JPEG."""
        import numpy as np

        from models.image_io import decode_image, encode_image
        from models.mask_render import render_mask

        image = decode_image(self.png)
        detections = self.detector.detect(image, PROMPT, box_threshold=self.box_threshold,
                                          text_threshold=self.text_threshold, max_boxes=self.max_boxes)
        if detections:
            mask = self.segmenter.segment(image, boxes=[d.box for d in detections])
        else:
            mask = np.zeros(image.shape[:2], dtype=bool)
        self.boxes = len(detections)
        self.mask_pixels[SEGMIND] = int(mask.sum())
        return encode_image(render_mask(mask, image, apply_mask=True), "jpeg")[0]


def direct_bench(call, seconds: float) -> dict:
    """Sequential in-process calls: the direct throughput and latency."""
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 20:
        t = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - start
    return {"calls": len(latencies), "per_s": len(latencies) / elapsed, "p50": pct(latencies, 50),
            "p99": pct(latencies, 99)}


def paired_latency(call, send, pairs: int) -> dict:
    """A direct call, then the same request served, `pairs` times in turn; per-pair differences."""
    direct, served = [], []
    for _ in range(pairs):
        t = time.perf_counter()
        call()
        direct.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        send()
        served.append((time.perf_counter() - t) * 1000)
    added = [s - d for s, d in zip(served, direct)]
    return {"pairs": pairs, "direct_p50": pct(direct, 50), "direct_p99": pct(direct, 99),
            "served_p50": pct(served, 50), "served_p99": pct(served, 99),
            "added_p50": pct(added, 50), "added_p99": pct(added, 99)}


def compare_images(direct: bytes, served: bytes) -> str:
    if direct == served:
        return "byte-identical"
    import numpy as np

    from models.image_io import decode_image

    a, b = decode_image(direct).astype(int), decode_image(served).astype(int)
    if a.shape != b.shape:
        return f"different sizes {a.shape} / {b.shape}"
    return f"pixels differ by up to {int(np.abs(a - b).max())}"


# ---------------------------------------------------------------------------------------- Locust
LOCUSTFILE = '''"""Locust users for loadtests/text_seg_benchmark.py (written by it; never imports ray)."""
import sys

sys.path.insert(0, {repo!r})

from locust import task  # noqa: E402

# The base user (no wait, timeouts, `Authorization: Key`), the JSON check, and, with
# VISUS_LOCUST_SAMPLES set, the exact per-request samples benchmark.py reads.
from loadtests.locustfile import VisusUser, _check_json  # noqa: E402

with open({evf_body!r}, "rb") as fh:
    EVF_BODY = fh.read()
with open({segmind_body!r}, "rb") as fh:
    SEGMIND_BODY = fh.read()


class EvfSamUser(VisusUser):
    """fal sync run of fal-ai/evf-sam."""

    @task
    def sync_run(self):
        with self.client.post("/{evf}", data=EVF_BODY, name={evf_name!r}, catch_response=True) as r:
            _check_json(r, "image")


class SegmindUser(VisusUser):
    """Segmind POST /v1/sam-v2-image with x-api-key; the answer is the JPEG itself."""

    default_headers = {{"x-api-key": {key!r}, "Content-Type": "application/json"}}

    @task
    def segment(self):
        with self.client.post("/v1/{segmind}", data=SEGMIND_BODY, name={segmind_name!r}, catch_response=True) as r:
            kind = r.headers.get("content-type", "") if r.headers else ""
            if r.status_code != 200:
                r.failure(f"HTTP {{r.status_code}}: {{r.text[:200] if r.text else ''}}")
            elif not kind.startswith("image/jpeg") or not r.content:
                r.failure(f"not a JPEG: {{kind}}")
'''
SAMPLE_NAME = {EVF: "evf-sam sync run", SEGMIND: "sam-v2-image"}
USER_CLASS = {EVF: "EvfSamUser", SEGMIND: "SegmindUser"}


def write_locustfile(work: Path, bodies: dict) -> Path:
    paths = {}
    for endpoint, key in ((EVF, "evf_body"), (SEGMIND, "segmind_body")):
        paths[key] = str(work / f"{key}.json")
        Path(paths[key]).write_text(json.dumps(bodies[endpoint]))
    path = work / "text_seg_locustfile.py"
    path.write_text(LOCUSTFILE.format(repo=str(REPO), evf=EVF, segmind=SEGMIND, key=API_KEY,
                                      evf_name=SAMPLE_NAME[EVF], segmind_name=SAMPLE_NAME[SEGMIND], **paths))
    return path


def locust_phase(endpoint: str, users: int, seconds: int, locustfile: Path, url: str, out: Path, meter: Meter,
                 warmup_s: float) -> Phase:
    tag = re.sub(r"[^a-z0-9]+", "_", endpoint.lower()).strip("_")
    phase = Phase(f"{tag}_u{users}", USER_CLASS[endpoint], users, seconds)
    run_locust(phase, url, out, meter, warmup_s, locustfile)
    return phase


def phase_figures(endpoint: str, phase: Phase, warmup_s: float) -> dict:
    latencies, _ = phase.ok("POST", SAMPLE_NAME[endpoint], warmup_s)
    rate = phase.rate("POST", SAMPLE_NAME[endpoint], warmup_s)
    cpu = phase.cpu
    per = {}
    if rate == rate and rate > 0:
        per = {"platform": 1000 * sum(cpu.get(c, 0.0) for c in PLATFORM) / rate,
               "replica": 1000 * cpu.get(REPLICA[endpoint], 0.0) / rate}
    return {"users": phase.users, "per_s": rate, "p50": pct(latencies, 50), "p99": pct(latencies, 99),
            "n": len(latencies), "load": phase.load, "cpu": cpu, "cpu_per_request": per,
            "failures": phase.failures, "requests": phase.requests}


# ---------------------------------------------------------------------------------------- one endpoint
def bench_endpoint(endpoint: str, direct: Direct, served: Served, max_ongoing: int, plan: Plan, locustfile: Path,
                   url: str, out: Path, meter: Meter) -> dict:
    call = direct.calls[endpoint]
    load = loadavg()
    d = direct_bench(call, plan.direct_s)
    d["load"] = load
    print(f"[{endpoint}] direct: {d['per_s']:.2f} calls/s, p50 {d['p50']:.1f} ms, p99 {d['p99']:.1f} ms "
          f"({d['calls']} calls, load {load})", flush=True)
    load = loadavg()
    p = paired_latency(call, lambda: served.send(endpoint), plan.pairs[endpoint])
    p["load"] = load
    print(f"[{endpoint}] pairs: direct p50 {p['direct_p50']:.1f} ms, served p50 {p['served_p50']:.1f} ms, "
          f"added p50 {p['added_p50']:.1f} / p99 {p['added_p99']:.1f} ms ({p['pairs']} pairs)", flush=True)
    phases = {}
    for key, users, seconds in (("one", 1, plan.sync1_s), ("load", max_ongoing, plan.load_s)):
        phase = locust_phase(endpoint, users, seconds, locustfile, url, out, meter, plan.warmup_s)
        phases[key] = phase_figures(endpoint, phase, plan.warmup_s)
        r = phases[key]
        print(f"[{endpoint}] Locust {users} user(s): {r['per_s']:.2f} requests/s, p50 {r['p50']:.1f} ms, "
              f"p99 {r['p99']:.1f} ms; {r['failures']}/{r['requests']} failed (load {r['load']})", flush=True)
    return {"endpoint": endpoint, "max_ongoing": max_ongoing, "direct": d, "paired": p, **phases,
            "served_pct": 100 * phases["load"]["per_s"] / d["per_s"],
            "served1_pct": 100 * phases["one"]["per_s"] / d["per_s"]}


# ---------------------------------------------------------------------------------------- report
TITLE = {EVF: "`fal-ai/evf-sam` (EVF-SAM2 tiny)", SEGMIND: "Segmind `sam-v2-image` (Grounding DINO tiny + SAM 2 micro)"}
CPU_LABELS = ("evf-sam replica", "grounding_dino replica", "gateway", "proxy", "queue actor", "credit ledger",
              "controller", "ray daemons", "ray other", "driver", "locust", "outside this benchmark")


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"Run {meta['date']} on {meta['machine']}{' (--quick)' if meta['quick'] else ''}; "
        f"load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}; "
        f"total {meta['wall_s']:.0f} s.",
        "",
        f"Request: a {meta['width']}x{meta['height']} PNG ({meta['png_kb']:.0f} KB; a red square on a gradient) "
        f"and the prompt \"{PROMPT}\"; evf-sam as a data URI with `Authorization: Key`, mask only, no "
        f"post-processing options; sam-v2-image as base64 with `x-api-key`, overlay, JPEG answer. Grounding "
        f"DINO tiny (random weights) finds {meta['boxes']} box(es) for it. Served output vs direct: evf-sam "
        f"{meta['same'][EVF]}, sam-v2-image {meta['same'][SEGMIND]}.",
        "",
        "**Throughput** (served: one replica reserving one CPU, so one torch thread; direct: sequential calls "
        "in one process on one torch thread. Locust users as noted; N = the replica's max_ongoing_requests)",
        "",
        "| endpoint | direct calls/s | served req/s, 1 user | served req/s, N users | served / direct at N | "
        "load avg (direct / N users) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(f"| {TITLE[r['endpoint']]} | {fmt(r['direct']['per_s'], 2)} | {fmt(r['one']['per_s'], 2)} | "
                     f"{fmt(r['load']['per_s'], 2)} (N = {r['max_ongoing']}) | {fmt(r['served_pct'], 0)} % | "
                     f"{r['direct']['load']} / {r['load']['load']} |")
    lines += [
        "",
        "**Latency** (ms. Pairs: one direct call, then the same request served by one sequential httpx client "
        "on a keep-alive connection, repeated; added = the per-pair difference served minus direct. Then the "
        "direct phase alone, and Locust at 1 and N users)",
        "",
        "| endpoint | pairs | pairs: direct p50 / p99 | pairs: served p50 / p99 | added p50 / p99 | "
        "direct phase p50 / p99 | Locust 1 user p50 / p99 | Locust N users p50 / p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        d, p, o, n = r["direct"], r["paired"], r["one"], r["load"]
        lines.append(f"| {TITLE[r['endpoint']]} | {p['pairs']} | {fmt(p['direct_p50'])} / {fmt(p['direct_p99'])} | "
                     f"{fmt(p['served_p50'])} / {fmt(p['served_p99'])} | {fmt(p['added_p50'])} / "
                     f"{fmt(p['added_p99'])} | {fmt(d['p50'])} / {fmt(d['p99'])} | {fmt(o['p50'])} / {fmt(o['p99'])} | "
                     f"{fmt(n['p50'])} / {fmt(n['p99'])} |")
    lines += [
        "",
        "**Where the CPU went** (cores busy on average during each Locust phase, out of "
        f"{os.cpu_count()}; CPU ms per request: platform = " + ", ".join(PLATFORM) + "; replica = the "
        "endpoint's own model replica)",
        "",
        "| endpoint / phase | platform ms / req | replica ms / req | " + " | ".join(CPU_LABELS) + " |",
        "|---|---:|---:|" + "---:|" * len(CPU_LABELS),
    ]
    for r in results:
        for key in ("one", "load"):
            ph = r[key]
            per = ph["cpu_per_request"]
            lines.append(f"| {r['endpoint']} / {ph['users']} user{'s' if ph['users'] > 1 else ''} | "
                         f"{fmt(per.get('platform', float('nan')))} | {fmt(per.get('replica', float('nan')))} | "
                         + " | ".join(fmt(ph["cpu"].get(lbl, 0.0), 2) for lbl in CPU_LABELS) + " |")
    busy = [f"{r['endpoint']} {r[k]['users']} user{'s' if r[k]['users'] > 1 else ''} "
            f"({fmt(r[k]['cpu'].get('outside this benchmark', 0.0), 2)} cores)"
            for r in results for k in ("one", "load") if r[k]["cpu"].get("outside this benchmark", 0.0) >= 0.1]
    if busy:
        lines += ["", "Other work on the box (outside this benchmark) overlapped: " + ", ".join(busy)
                  + "; those phases' figures may be worse than on an idle box."]
    failures = [(f"{r['endpoint']} {r[k]['users']} user(s)", r[k]["failures"], r[k]["requests"])
                for r in results for k in ("one", "load") if r[k]["failures"]]
    lines += ["", "Failed requests: " + (", ".join(f"{n} {a}/{b}" for n, a, b in failures) if failures else "none")
              + ". Not measured: real-size EVF-SAM2 (or Grounding DINO) at fp16 on a GPU; there is no GPU here."]
    return "\n".join(lines) + "\n"


SECTION_INTRO = f"""## Text-prompted segmentation (EVF-SAM2, Segmind sam-v2-image)

`loadtests/text_seg_benchmark.py` measures the two text-prompted endpoints, `fal-ai/evf-sam` (sync run)
and Segmind `POST /v1/sam-v2-image` with a `prompt`, on the tiny checkpoints `visus up` writes (EVF-SAM2
tiny multitask, Grounding DINO tiny, SAM 2 micro), against direct model calls:

- **direct**: in one process on one torch thread, sequentially, the replica's per-request work (evf-sam:
  decode the PNG, `EvfSam2.predict`, `postprocess`, `compose`, encode the PNG; sam-v2-image: decode,
  `GroundingDino.detect`, `Sam2ImageSegmenter.segment` on its boxes, render the overlay, encode the JPEG);
- **served**: a Visus stack in a Ray cluster of its own (own GCS, HAProxy and direct-ingress ports),
  serving only these two endpoints (evf-sam, and the `grounding_dino` deployment behind sam-v2-image that
  evf-sam names as its worker), one replica of one CPU each, the Segmind key's credits set out of reach.
  Latency from one sequential httpx client, alternating one direct call and one served call so that the
  added latency is a per-pair difference; throughput from Locust in its own process (1 user, then
  max_ongoing_requests users);
- the ratios served / direct, taken in the same run.

Reproduce with `make bench-text` (or `.venv/bin/python loadtests/text_seg_benchmark.py`; `make bench-text
QUICK=1` or `--quick` for a smoke run that only prints). Random weights: the figures are the cost of the
tiny architectures, not of the real checkpoints.

{MARK_START}
{MARK_END}
"""


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = bench.benchmark_arguments(__doc__.split("\n\n")[0], keep_what="checkpoints, home").parse_args(argv)
    plan = QUICK if args.quick else FULL
    output = bench.output_file(args)

    started = time.perf_counter()
    load_start = loadavg()
    work = Path(tempfile.mkdtemp(prefix="visus-text-seg-bench-"))
    out = work / "locust"
    out.mkdir()
    print(f"work folder {work} (Locust CSVs in {out}); load average {load_start}", flush=True)

    from serve.cli import write_tiny_models

    model_dir = work / "models"
    write_tiny_models(model_dir)
    png = bench_image_png()
    bodies = request_bodies(png)
    locustfile = write_locustfile(work, bodies)
    direct = Direct(model_dir, png)
    expected = {endpoint: call() for endpoint, call in direct.calls.items()}

    bench.isolate_ray_ports(DIRECT_INGRESS_HTTP, DIRECT_INGRESS_GRPC)
    import ray
    from ray import serve

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    meter = Meter()
    results, same = [], {}
    try:
        start_ray(port)
        t = time.perf_counter()
        config = deploy(model_dir, work / "home", port)
        max_ongoing = {e.id: e.options.max_ongoing_requests for e in config.endpoints}
        with http_client(url) as client:
            wait_ready(client)
            served = Served(client, bodies)
            for endpoint in (EVF, SEGMIND):
                for _ in range(3):  # warm-up: the replicas' first calls allocate and pick kernels
                    served.send(endpoint)
                same[endpoint] = compare_images(expected[endpoint], served.output(endpoint))
            print(f"deployed and warm in {time.perf_counter() - t:.0f} s (load {loadavg()}); served output vs "
                  f"direct: " + ", ".join(f"{k} {v}" for k, v in same.items()), flush=True)
            for endpoint in (EVF, SEGMIND):
                results.append(bench_endpoint(endpoint, direct, served, max_ongoing[endpoint], plan, locustfile,
                                              url, out, meter))
        undeploy(config)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()

    from models.image_io import decode_image

    height, width = decode_image(png).shape[:2]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "quick": args.quick,
            "load_start": load_start, "load_end": loadavg(), "wall_s": time.perf_counter() - started,
            "width": width, "height": height, "png_kb": len(png) / 1000, "boxes": direct.boxes, "same": same}
    bench.publish(markdown(results, meta), {"meta": meta, "results": results}, out, output, MARK_START, MARK_END,
                  intro=SECTION_INTRO, after=VIDEO_MARK_END)
    bench.tidy(args.keep, work, [model_dir, work / "home"], f"Locust CSVs and results.json kept in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
