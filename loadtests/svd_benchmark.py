"""Benchmark `fal-ai/svd` (Stable Video Diffusion image-to-video) on the tiny checkpoint: seconds per
denoising step and per video, served through Visus vs the same generation called directly.

    .venv/bin/python loadtests/svd_benchmark.py            # full run (about 4 minutes on 2 cores); rewrites BENCHMARKS.md
    .venv/bin/python loadtests/svd_benchmark.py --quick    # smoke run, every phase shortened; prints only

Checkpoints: the tiny random SVD `models.svd_tiny.write_tiny_svd` writes and its temporal depth ControlNet
(`write_tiny_svd_controlnet`), the ones `visus up` serves when no model_dir is set, with the default
config's model settings (output 64x64, decode_chunk_size 8, fps 7, ControlNet scale 1). Requests: the
256x192 Locust test picture (text_seg_benchmark.py's), 8 frames, 10 steps, a fixed seed per setting:

- plain;
- motion brush: a PNG still-mask (the left half white: stays still) as a data URI;
- depth control: 8 depth maps (64x64 PNGs) in a zip data URI, which set the frame count.

In ONE run it:

1. measures in this process on one torch thread, after a warm-up, the replica's per-request work called
   directly: decode the inputs (picture, mask, control-map archive) as the deployment does,
   `models.svd.SvdGenerator.generate` with the deployment's arguments, then the mp4 encode the deployment
   adds (`deployments.svd.Svd._mp4`); seconds per denoising step from the `on_step` callback's times;
2. starts a Ray cluster of its own (own GCS, HAProxy stats/metrics, fallback-proxy and direct-ingress ports,
   so it can share the box with another cluster; loopback only) and deploys a Visus stack serving only
   `fal-ai/svd`: one replica reserving one CPU (so one torch thread), max_ongoing_requests 1 as configured;
3. per setting, alternates one direct generation and the same request as a sync run over HTTP
   (`Authorization: Key`, one sequential client: generation is compute-bound and the replica takes one
   request at a time): per-video wall times, both halves of a pair seeing the same state of the box;
4. per setting, a few queue jobs (submit, poll the status, then the status with logs): seconds per step
   from the timestamps of the replica's "step k/N" log lines;
5. checks the served video against the direct one (same seed: same frames, up to H.264), prints a markdown
   section and rewrites the one between the `bench:svd` markers in BENCHMARKS.md.

Helpers (Ray start, port isolation, HTTP client, readiness, percentiles, the section writer) are
loadtests/benchmark.py's and loadtests/text_seg_benchmark.py's. Only this run's own cluster is shut down.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtests import benchmark as bench  # noqa: E402  (needs REPO on sys.path)
from loadtests import text_seg_benchmark as ts  # noqa: E402
from loadtests.benchmark import API_KEY, free_port, loadavg, machine, pct, start_ray  # noqa: E402
from loadtests.benchmark import f as fmt  # noqa: E402

OUTSIDE = "outside this benchmark"  # CpuMeter's label for the rest of the box
MARK_START = "<!-- bench:svd:start -->"
MARK_END = "<!-- bench:svd:end -->"
TEXT_SEG_MARK_END = ts.MARK_END

ENDPOINT = "fal-ai/svd"
QUEUE_ACTOR = "visus-svd-bench-queue"
FRAMES = 8
STEPS = 10
HEADERS = {"Authorization": f"Key {API_KEY}", "Content-Type": "application/json"}

# Ray Serve's per-host fixed ranges, away from the defaults and from the other benchmarks'.
DIRECT_INGRESS_HTTP = (38000, 39000)
DIRECT_INGRESS_GRPC = (48000, 49000)


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    seed: int
    brush: bool = False
    depth: bool = False


SETTINGS = (Setting("plain", f"{FRAMES} frames x {STEPS} steps", 42),
            Setting("brush", f"{FRAMES} frames x {STEPS} steps, motion brush", 43, brush=True),
            Setting("depth", f"{FRAMES} depth maps x {STEPS} steps (ControlNet)", 44, depth=True))


@dataclass(frozen=True)
class Plan:
    warmup: int  # direct and served runs per setting before measuring
    pairs: int  # direct / sync-run pairs per setting
    queue_jobs: int  # queue jobs per setting (seconds per step from the status logs)
    poll_s: float  # status poll interval of a queue job


FULL = Plan(warmup=2, pairs=40, queue_jobs=10, poll_s=0.1)
QUICK = Plan(warmup=1, pairs=3, queue_jobs=1, poll_s=0.1)


class Meter(bench.CpuMeter):
    """benchmark.py's CPU meter (this process and its children, i.e. our own Ray cluster, vs the whole box)."""

    LABELS = (("ServeReplica:visus:gateway", "gateway"), ("ServeReplica:", "svd replica"), ("ProxyActor", "proxy"),
              ("haproxy", "proxy"), ("ServeController", "controller"), ("JobQueue", "queue actor"),
              ("gcs_server", "ray daemons"), ("raylet", "ray daemons"), ("ray::", "ray other"),
              ("ray/", "ray daemons"))


# ---------------------------------------------------------------------------------------- inputs
def png(pixels) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def mask_png(width: int, height: int) -> bytes:
    """The motion brush: the left half white (stays still), the right half black (moves)."""
    import numpy as np

    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = 255
    return png(pixels)


def depth_zip(frames: int, size: int = 64) -> bytes:
    """`frames` 64x64 depth maps (a near disk moving right over a far-to-near gradient), zipped."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(frames):
            depth = 40 + 120 * yy / (size - 1)
            cx = size * (0.25 + 0.5 * i / max(frames - 1, 1))
            depth[(xx - cx) ** 2 + (yy - size / 2) ** 2 < (size / 5) ** 2] = 240
            gray = depth.astype(np.uint8)
            archive.writestr(f"frame_{i}.png", png(np.stack([gray] * 3, axis=2)))
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@dataclass
class Inputs:
    image: bytes
    mask: bytes
    maps: bytes

    def body(self, s: Setting) -> dict:
        out = {"image_url": data_uri(self.image, "image/png"), "seed": s.seed, "steps": STEPS}
        if s.depth:
            out["control_maps_data_url"] = data_uri(self.maps, "application/zip")  # sets the frame count
        else:
            out["num_frames"] = FRAMES
        if s.brush:
            out["mask_image_url"] = data_uri(self.mask, "image/png")
        return out


# ---------------------------------------------------------------------------------------- config
def endpoint_config(model_dir: Path) -> dict:
    """The default config's fal-ai/svd: CPU, one replica of one CPU, max_ongoing_requests as configured."""
    from serve.config import DEFAULT_CONFIG_PATH, load_config

    for endpoint in load_config(DEFAULT_CONFIG_PATH, model_dir=str(model_dir)).endpoints:
        if endpoint.id == ENDPOINT:
            e = endpoint.model_dump()
            e["model"] = {**e["model"], "device": "cpu"}
            e["options"] = {**e["options"], "num_replicas": 1, "autoscaling_config": None, "num_cpus": 1,
                            "num_gpus": 0}
            return e
    raise RuntimeError(f"{ENDPOINT} is not in the default config")


def model_settings(model_dir: Path) -> dict:
    model = dict(endpoint_config(model_dir)["model"])
    for key in ("checkpoint", "controlnet"):
        if isinstance(model.get(key), str):
            model[key] = model[key].replace("${model_dir}", str(model_dir))
    return model


def deploy(model_dir: Path, home: Path, port: int):
    from ray import serve

    from serve.app_builder import build_app
    from serve.config import DEFAULT_CONFIG_PATH, load_config

    config = load_config(DEFAULT_CONFIG_PATH, home=str(home), port=port, host="127.0.0.1", api_keys=[API_KEY],
                         model_dir=str(model_dir), endpoints=[endpoint_config(model_dir)],
                         queue={"actor_name": QUEUE_ACTOR}, limits={"sync_timeout_s": 300}).with_secrets()
    serve.run(build_app(config, has_gpu=False), name=config.app_name, route_prefix="/", blocking=False)
    return config


# ---------------------------------------------------------------------------------------- direct
class Direct:
    """The replica's per-request work, in this process on one torch thread."""

    def __init__(self, model: dict, inputs: Inputs):
        import torch

        from models.svd import SvdGenerator, load_svd_pipeline

        torch.set_num_threads(1)
        self.inputs = inputs
        pipe, controlled = load_svd_pipeline(model["checkpoint"], device="cpu", dtype="float32",
                                             controlnet=model.get("controlnet"))
        self.generator = SvdGenerator(pipe, int(model.get("height", 576)), int(model.get("width", 1024)),
                                      model.get("decode_chunk_size"), controlled=controlled,
                                      control_scale=float(model.get("controlnet_scale", 1.0)))
        self.fps = int(model.get("fps", 7))
        self.max_frames = int(model.get("max_frames", self.generator.default_frames))

    def decode(self, s: Setting) -> dict:
        """deployments/svd.py's decode on the request's bytes: picture, still mask, control maps."""
        from models.control_maps import read_control_maps
        from models.image_io import decode_image

        image = decode_image(self.inputs.image)
        still = decode_image(self.inputs.mask).mean(axis=2) > 127 if s.brush else None
        maps = None
        if s.depth:
            maps = read_control_maps(self.inputs.maps, max_frames=self.max_frames, max_pixels=40_000_000)
        return {"image": image, "still": still, "maps": maps, "frames": len(maps) if maps else FRAMES}

    def run(self, s: Setting) -> dict:
        from deployments.svd import Svd

        stamps: list[float] = []
        t0 = time.perf_counter()
        x = self.decode(s)
        t1 = time.perf_counter()
        result = self.generator.generate(
            x["image"], seed=s.seed, num_frames=x["frames"], steps=STEPS, fps=self.fps, motion_bucket_id=127,
            cond_aug=0.02, still_mask=x["still"], control_maps=x["maps"],
            on_step=lambda done, total: stamps.append(time.perf_counter()))
        t2 = time.perf_counter()
        video = Svd._mp4(result.frames, self.fps)
        t3 = time.perf_counter()
        if len(stamps) != STEPS:
            raise RuntimeError(f"{len(stamps)} step callbacks for {STEPS} steps")
        return {"decode_s": t1 - t0, "generate_s": t2 - t1, "encode_s": t3 - t2, "total_s": t3 - t0,
                "step_s": (stamps[-1] - stamps[0]) / (STEPS - 1), "before_s": stamps[0] - t1,
                "after_s": t2 - stamps[-1], "mp4": video, "frames": result.frames}


# ---------------------------------------------------------------------------------------- served
class Served:
    def __init__(self, client, inputs: Inputs):
        self.client = client
        self.payload = {s.key: json.dumps(inputs.body(s)).encode() for s in SETTINGS}

    def sync(self, s: Setting) -> tuple[float, dict]:
        t = time.perf_counter()
        r = self.client.post(f"/{ENDPOINT}", content=self.payload[s.key], headers=HEADERS)
        wall = time.perf_counter() - t
        if r.status_code != 200:
            raise RuntimeError(f"{s.key}: HTTP {r.status_code}: {r.text[:500]}")
        return wall, r.json()

    def fetch(self, url: str) -> bytes:
        path = "/" + url.split("/", 3)[3] if url.startswith("http") else url
        got = self.client.get(path)
        got.raise_for_status()
        return got.content

    def queue_job(self, s: Setting, poll_s: float) -> dict:
        """Submit, poll until COMPLETED, read the status with logs: seconds per step from the step logs."""
        t = time.perf_counter()
        r = self.client.post(f"/queue/{ENDPOINT}", content=self.payload[s.key], headers=HEADERS)
        r.raise_for_status()
        submitted = r.json()
        status_path = f"/queue/{ENDPOINT}/requests/{submitted['request_id']}/status"
        while True:
            st = self.client.get(status_path, headers=HEADERS)
            st.raise_for_status()
            if st.json()["status"] == "COMPLETED":
                break
            time.sleep(poll_s)
        e2e = time.perf_counter() - t
        status = self.client.get(status_path, params={"logs": "1"}, headers=HEADERS).json()
        result = self.client.get(f"/queue/{ENDPOINT}/requests/{submitted['request_id']}", headers=HEADERS)
        if result.status_code != 200:
            raise RuntimeError(f"{s.key} queue job: HTTP {result.status_code}: {result.text[:500]}")
        logs = status.get("logs") or []
        steps = [dt.datetime.fromisoformat(log["timestamp"]).timestamp() for log in logs
                 if log["message"].startswith("step ")]
        if len(steps) != STEPS:
            raise RuntimeError(f"{s.key} queue job: {len(steps)} step logs for {STEPS} steps")
        decoded = [dt.datetime.fromisoformat(log["timestamp"]).timestamp() for log in logs
                   if " frames at " in log["message"]]
        return {"e2e_s": e2e, "step_s": (steps[-1] - steps[0]) / (STEPS - 1),
                "before_s": steps[0] - decoded[0] if decoded else float("nan"),
                "inference_s": float((status.get("metrics") or {}).get("inference_time", float("nan")))}


def compare_videos(direct: bytes, served: bytes) -> str:
    """Byte-identical, or how far the decoded frames are apart (libx264 does not always repeat its bytes)."""
    if direct == served:
        return "byte-identical"
    import numpy as np

    from models.video_io import probe_video, read_frames

    a = read_frames(direct, 0, probe_video(direct).num_frames).astype(int)
    b = read_frames(served, 0, probe_video(served).num_frames).astype(int)
    if a.shape != b.shape:
        return f"different shapes {a.shape} / {b.shape}"
    diff = np.abs(a - b)
    return f"same frames up to H.264 (decoded: mean abs diff {diff.mean():.2f}, max {int(diff.max())})"


# ---------------------------------------------------------------------------------------- one setting
def bench_setting(s: Setting, direct: Direct, served: Served, plan: Plan, meter: Meter) -> dict:
    load = loadavg()
    runs, walls = [], []
    before = meter.snapshot()
    for _ in range(plan.pairs):
        runs.append(direct.run(s))
        walls.append(served.sync(s)[0])
    cpu = Meter.diff(before, meter.snapshot())
    added = [w - r["total_s"] for w, r in zip(walls, runs)]
    ratios = [w / r["total_s"] for w, r in zip(walls, runs)]
    d = {k: pct([r[k] for r in runs], 50) for k in ("decode_s", "generate_s", "encode_s", "total_s", "step_s",
                                                     "before_s", "after_s")}
    d["total_p99"] = pct([r["total_s"] for r in runs], 99)
    d["step_p99"] = pct([r["step_s"] for r in runs], 99)
    sv = {"p50": pct(walls, 50), "p99": pct(walls, 99), "added_p50": pct(added, 50), "added_p99": pct(added, 99),
          "ratio_p50": pct(ratios, 50)}
    print(f"[{s.key}] direct: generate {d['generate_s']:.3f} s ({d['step_s'] * 1000:.1f} ms/step), mp4 "
          f"{d['encode_s'] * 1000:.1f} ms, total {d['total_s']:.3f} s; served sync run {sv['p50']:.3f} s "
          f"(x{sv['ratio_p50']:.2f}, added {sv['added_p50'] * 1000:.0f} ms) over {plan.pairs} pairs (load {load}; "
          f"other work on the box {cpu.get(OUTSIDE, 0.0):.2f} cores)", flush=True)
    before = meter.snapshot()
    jobs = [served.queue_job(s, plan.poll_s) for _ in range(plan.queue_jobs)]
    queue_cpu = Meter.diff(before, meter.snapshot())
    q = {"jobs": len(jobs), "step_s": pct([j["step_s"] for j in jobs], 50),
         "step_p99": pct([j["step_s"] for j in jobs], 99), "e2e_s": pct([j["e2e_s"] for j in jobs], 50),
         "before_s": pct([j["before_s"] for j in jobs], 50), "inference_s": pct([j["inference_s"] for j in jobs], 50)}
    print(f"[{s.key}] queue jobs: {q['step_s'] * 1000:.1f} ms/step from the status logs (direct "
          f"{d['step_s'] * 1000:.1f}), end to end {q['e2e_s']:.3f} s, inference_time {q['inference_s']:.3f} s "
          f"({len(jobs)} jobs)", flush=True)
    return {"setting": s.key, "label": s.label, "seed": s.seed, "pairs": plan.pairs, "load": load, "direct": d,
            "served": sv, "queue": q, "step_ratio": q["step_s"] / d["step_s"], "cpu": cpu, "queue_cpu": queue_cpu}


# ---------------------------------------------------------------------------------------- report
def ms(x: float) -> str:
    return fmt(1000 * x)


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"Run {meta['date']} on {meta['machine']}{' (--quick)' if meta['quick'] else ''}; "
        f"load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}; "
        f"total {meta['wall_s']:.0f} s.",
        "",
        f"Checkpoint: the tiny random SVD (and ControlNet), output {meta['width']}x{meta['height']}, "
        f"decode_chunk_size {meta['chunk']}, fps {meta['fps']}. Request: the {meta['image']} test picture "
        f"(PNG data URI), {FRAMES} frames, {STEPS} steps, seed fixed per setting; the motion brush as a PNG "
        f"data URI (left half still), the depth maps as a zip data URI ({FRAMES} 64x64 PNGs, "
        f"{meta['zip_kb']:.1f} KB). Served video vs direct: "
        + "; ".join(f"{r['setting']} {meta['same'][r['setting']]}" for r in results) + ".",
        "",
        "**Per video** (seconds, p50 over the pairs; a pair = one direct generation in this process on one torch "
        "thread, then the same request as a sync run over HTTP, one sequential client; the served replica "
        "reserves one CPU, so one torch thread. Direct total = decode the inputs + `generate` + mp4 encode, "
        "the replica's work; added = per-pair served minus direct total, served / direct = the per-pair ratio's "
        "p50; other work = cores busy on the box outside this benchmark's processes during the pairs)",
        "",
        "| setting | pairs | direct `generate` | + mp4 encode (ms) | direct total p50 / p99 | served sync run "
        "p50 / p99 | added p50 / p99 (ms) | served / direct | load avg | other work (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        d, sv = r["direct"], r["served"]
        lines.append(f"| {r['label']} | {r['pairs']} | {fmt(d['generate_s'], 3)} | {ms(d['encode_s'])} | "
                     f"{fmt(d['total_s'], 3)} / {fmt(d['total_p99'], 3)} | {fmt(sv['p50'], 3)} / {fmt(sv['p99'], 3)} | "
                     f"{ms(sv['added_p50'])} / {ms(sv['added_p99'])} | {fmt(sv['ratio_p50'], 2)} | {r['load']} | "
                     f"{fmt(r['cpu'].get(OUTSIDE, 0.0), 2)} |")
    lines += [
        "",
        "**Per denoising step** (ms: the mean interval between the step callbacks of a video, steps 1 to "
        f"{STEPS}, p50 / p99 over videos. Direct: `on_step` times in the pairs' direct runs; served: the "
        "timestamps of the replica's \"step k/N\" lines in the status logs of queue jobs. Before step 1: "
        "conditioning (CLIP and VAE encode) and the first step; direct from the start of `generate`, served "
        "from the decode log line)",
        "",
        "| setting | direct ms/step | served ms/step (queue jobs) | served / direct | direct: before step 1 / "
        "after the last step (ms) | served: before step 1 (ms) | queue job end to end p50 (s) | "
        "inference_time p50 (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        d, q = r["direct"], r["queue"]
        lines.append(f"| {r['label']} | {ms(d['step_s'])} / {ms(d['step_p99'])} | {ms(q['step_s'])} / "
                     f"{ms(q['step_p99'])} ({q['jobs']} jobs) | {fmt(r['step_ratio'], 2)} | {ms(d['before_s'])} / "
                     f"{ms(d['after_s'])} | {ms(q['before_s'])} | {fmt(q['e2e_s'], 3)} | {fmt(q['inference_s'], 3)} |")
    busy = [f"{r['setting']} {phase} ({fmt(r[key].get(OUTSIDE, 0.0), 2)} cores)" for r in results
            for key, phase in (("cpu", "pairs"), ("queue_cpu", "queue jobs")) if r[key].get(OUTSIDE, 0.0) >= 0.1]
    if busy:
        lines += ["", "Other work on the box (outside this benchmark) overlapped: " + ", ".join(busy)
                  + "; those figures may be worse than on an idle box."]
    lines += ["", "Not measured: real-size SVD-XT (25 frames, 576x1024, fp16) on a GPU; no GPU was lent to this run."]
    return "\n".join(lines) + "\n"


SECTION_INTRO = f"""## Stable Video Diffusion

`loadtests/svd_benchmark.py` measures `fal-ai/svd` on the tiny random SVD checkpoint (and its temporal depth
ControlNet) that `visus up` writes, at the default config's 64x64 output, in three settings: 8 frames x 10
steps plain, the same with the motion brush (a still mask), and 8 depth control maps:

- **direct**: in one process on one torch thread, after a warm-up, the replica's work: decode the inputs,
  `SvdGenerator.generate` with the deployment's arguments (seconds per denoising step from the `on_step`
  callback's times), then the mp4 encode the deployment adds;
- **served**: a Visus stack in a Ray cluster of its own (own GCS, HAProxy and direct-ingress ports) serving
  only `fal-ai/svd`, one replica of one CPU; the same requests and seeds as sync runs over HTTP
  (`Authorization: Key`; mask as a PNG data URI, control maps as a zip data URI), one sequential client
  alternating with the direct runs; seconds per step from the timestamps of the "step k/N" status logs of
  queue jobs;
- the ratios served / direct, per video and per step, taken in the same run.

Reproduce with `make bench-svd` (or `.venv/bin/python loadtests/svd_benchmark.py`; `make bench-svd QUICK=1`
or `--quick` for a smoke run that only prints). Random weights at 64x64: the figures are the cost of the
tiny architecture and of the serving path around it, not of real SVD.

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
    work = Path(tempfile.mkdtemp(prefix="visus-svd-bench-"))
    print(f"work folder {work}; load average {load_start}", flush=True)

    from models.image_io import decode_image
    from models.svd_tiny import write_tiny_svd, write_tiny_svd_controlnet

    model_dir = work / "models"
    write_tiny_svd(model_dir / "svd", name="svd-tiny")
    write_tiny_svd_controlnet(model_dir / "svd", name="svd-controlnet-tiny")
    model = model_settings(model_dir)
    image = ts.bench_image_png()
    height, width = decode_image(image).shape[:2]
    inputs = Inputs(image=image, mask=mask_png(width, height), maps=depth_zip(FRAMES))
    direct = Direct(model, inputs)
    expected = {}
    for s in SETTINGS:  # warm-up: first calls allocate and pick kernels
        for _ in range(plan.warmup + 1):
            expected[s.key] = direct.run(s)["mp4"]
    print(f"direct warm in {time.perf_counter() - started:.0f} s", flush=True)

    bench.isolate_ray_ports(DIRECT_INGRESS_HTTP, DIRECT_INGRESS_GRPC)
    import ray
    from ray import serve

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    results, same = [], {}
    meter = Meter()
    try:
        start_ray(port)
        t = time.perf_counter()
        config = deploy(model_dir, work / "home", port)
        with ts.http_client(url) as client:
            ts.wait_ready(client)
            served = Served(client, inputs)
            for s in SETTINGS:
                for _ in range(plan.warmup):
                    served.sync(s)
                served.queue_job(s, plan.poll_s)  # warm-up of the queue path too
                out = served.sync(s)[1]
                if out["seed"] != s.seed:
                    raise RuntimeError(f"{s.key}: seed {out['seed']} returned for {s.seed}")
                same[s.key] = compare_videos(expected[s.key], served.fetch(out["video"]["url"]))
            print(f"deployed and warm in {time.perf_counter() - t:.0f} s (load {loadavg()}); served vs direct: "
                  + "; ".join(f"{k} {v}" for k, v in same.items()), flush=True)
            for s in SETTINGS:
                results.append(bench_setting(s, direct, served, plan, meter))
        ts.undeploy(config)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "quick": args.quick,
            "load_start": load_start, "load_end": loadavg(), "wall_s": time.perf_counter() - started,
            "width": direct.generator.width, "height": direct.generator.height,
            "chunk": direct.generator.decode_chunk_size, "fps": direct.fps, "image": f"{width}x{height}",
            "zip_kb": len(inputs.maps) / 1000, "same": same}
    bench.publish(markdown(results, meta), {"meta": meta, "results": results}, work, output, MARK_START, MARK_END,
                  intro=SECTION_INTRO, after=TEXT_SEG_MARK_END)
    bench.tidy(args.keep, work, [model_dir, work / "home"], f"results.json kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
