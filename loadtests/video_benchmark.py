"""Benchmark `fal-ai/sam2/video`: the served, chunked pipeline against the plain `sam2` video predictor.

    .venv/bin/python loadtests/video_benchmark.py            # full run (about 8 minutes on 2 cores); rewrites BENCHMARKS.md
    .venv/bin/python loadtests/video_benchmark.py --quick    # smoke run: short video, small frame counts; prints only

For each checkpoint (the tiny "micro" test model, and a random-weight sam2.1_hiera_t at image size 256,
the real architecture and cost, both written as loadtests/benchmark.py writes them) it measures:

1. **speed**: frames/s of a synthetic video (moving coloured shapes, H.264; object 1 from a point and
   object 2 from a box on frame 0; overlay output), measured two ways:
   - plain: `sam2`'s own video predictor in one process (`init_state` on the frames as JPEGs, the same
     prompts, `propagate_in_video`);
   - served: a Visus stack on a Ray cluster of our own, serving only `fal-ai/sam2/video` (propagator:
     one replica, one CPU) and its `sam2_video_encoder` worker at 1 and then 2 replicas of one CPU;
     one sync run over HTTP after a warm-up run, timed end to end;
2. **where the time goes**, per frame, in one process with the models-layer functions the pipeline
   uses (range decode, image encoder, propagation, overlay render + H.264 write), and, for the served
   runs, how long the propagator waited for the encoders (parsed from a queue job's status logs);
3. **memory**: peak RSS against frame count of the chunked path in one process (propagator + range
   features encoded locally, as the deployment does without an encoder worker) and of the plain
   predictor, which holds every frame; each run in a fresh subprocess.

Every model process runs one torch thread: the plain and per-frame runs set it, the replicas get it
from their one-CPU reservation. Direct measurements run in subprocesses before the Ray cluster starts.
The cluster is ours alone (its own GCS, HAProxy, fallback-proxy and direct-ingress ports, so it can
share the box with another cluster) and is the only one shut down at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtests import benchmark as bench  # noqa: E402  (needs REPO on sys.path)
from loadtests.benchmark import API_KEY, f as fmt, free_port, loadavg, machine, start_ray, undeploy  # noqa: E402

MARK_START = "<!-- bench:sam2-video:start -->"
MARK_END = "<!-- bench:sam2-video:end -->"
DIRECT_INGRESS_HTTP = (33000, 34000)  # away from the default range another cluster on this box may use
DIRECT_INGRESS_GRPC = (43000, 44000)
ENDPOINT = "fal-ai/sam2/video"
ENCODER = "sam2_video_encoder"
FPS = 24
WARM_FRAMES = 8  # the plain predictor's warm-up clip

RANGE_LOG = re.compile(r"range (\d+)/(\d+): frames (\d+)-(\d+) (\w+) in ([\d.]+) s \(([\d.]+) s waiting for features\)")
RENDER_LOG = re.compile(r"rendered (\d+) frames in ([\d.]+) s")


@dataclass(frozen=True)
class Plan:
    frames: int  # length of the speed video
    width: int
    height: int
    memory_frames: tuple  # frame counts of the chunked RSS runs
    plain_memory_frames: tuple  # ... and of the plain predictor's (it holds every frame: the smaller ones)
    memory_size: int  # side of the square video of the RSS runs
    encoders: tuple = (1, 2)


FULL = Plan(frames=64, width=320, height=240, memory_frames=(250, 500, 1000, 2000),
            plain_memory_frames=(250, 500, 1000), memory_size=128)
QUICK = Plan(frames=20, width=160, height=120, memory_frames=(40, 80), plain_memory_frames=(40, 80), memory_size=128)


# ---------------------------------------------------------------------------------------- the video
def bounce(t: float, span: float) -> float:
    """A triangle wave in [0, span]: shapes move back and forth instead of jumping at the edges."""
    t %= 2 * span
    return t if t <= span else 2 * span - t


def shape_positions(i: int, width: int, height: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(x, y, side) of the red square and (cx, cy, radius) of the green disc on frame i."""
    side, radius = height // 4, height // 6
    square = (int(bounce(3 * i, width - side)), height // 8, side)  # top band, moving right first
    # The disc moves left first and bobs up and down in the bottom half.
    cx = int(width - radius - bounce(2 * i, width - 2 * radius))
    cy = int(height // 2 + bounce(i, height // 4))
    return square, (cx, cy, radius)


def synthetic_frame(i: int, width: int, height: int):
    import numpy as np

    frame = np.empty((height, width, 3), np.uint8)
    frame[...] = np.linspace(40, 110, height, dtype=np.uint8)[:, None, None]  # a gradient, not a flat field
    frame[..., 2] = 90
    (x, y, side), (cx, cy, r) = shape_positions(i, width, height)
    frame[y:y + side, x:x + side] = (220, 40, 40)
    yy, xx = np.ogrid[:height, :width]
    frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (40, 200, 60)
    return frame


def write_video(path: Path, frames: int, width: int, height: int) -> Path:
    from models.video_io import Mp4Writer

    with Mp4Writer(path, fps=FPS, width=width, height=height) as out:
        for i in range(frames):
            out.write(synthetic_frame(i, width, height))
    return path


def jpeg_folder(folder: Path, frames) -> Path:
    """`<index>.jpg` files, the layout `sam2`'s `init_state` reads."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    return folder


def first_frames(folder: Path, target: Path, count: int) -> Path:
    """A folder of links to the first `count` JPEGs of `folder`."""
    target.mkdir(parents=True, exist_ok=True)
    for src in sorted(folder.glob("*.jpg"))[:count]:
        (target / src.name).symlink_to(src)
    return target


def prompt_geometry(width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Object 1: a point in the square; object 2: a box around the disc; both on frame 0."""
    (x, y, side), (cx, cy, r) = shape_positions(0, width, height)
    point = (x + side // 2, y + side // 2)
    box = (max(cx - r - 2, 0), max(cy - r - 2, 0), min(cx + r + 2, width - 1), min(cy + r + 2, height - 1))
    return point, box


def object_prompts(width: int, height: int) -> list:
    from models.sam2_video import ObjectPrompt

    point, box = prompt_geometry(width, height)
    return [ObjectPrompt(1, 0, points=[point], labels=[1]), ObjectPrompt(2, 0, box=box)]


def request_body(video: bytes, width: int, height: int) -> dict:
    """The same prompts as `object_prompts`, as a `fal-ai/sam2/video` request."""
    (px, py), (x0, y0, x1, y1) = prompt_geometry(width, height)
    return {"video_url": "data:video/mp4;base64," + base64.b64encode(video).decode(),
            "prompts": [{"x": px, "y": py, "label": 1, "frame_index": 0, "object_id": 1}],
            "box_prompts": [{"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1, "frame_index": 0, "object_id": 2}],
            "apply_mask": True}


def pipeline_settings() -> tuple[int, int]:
    """chunk_size and prefetch of the default config: what the served endpoint runs with."""
    from serve.config import DEFAULT_CONFIG_PATH, load_config

    endpoint = next(e for e in load_config(DEFAULT_CONFIG_PATH).endpoints if e.id == ENDPOINT)
    return int(endpoint.model.get("chunk_size", 16)), int(endpoint.model.get("prefetch", 2))


# ---------------------------------------------------------------------------------------- child processes
def one_thread():
    import torch

    torch.set_num_threads(1)
    return torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def high_water_mb() -> float:
    """The kernel's VmHWM: the same peak, for the memory this process itself ever mapped."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_plain(predictor, folder: str, prompts: list, keep_masks: bool = True) -> tuple[float, int]:
    """`sam2`'s own flow on a JPEG folder: init_state, the prompts, propagate_in_video. (seconds, frames)."""
    import numpy as np
    import torch

    started = time.perf_counter()
    frames = 0
    with torch.inference_mode():
        state = predictor.init_state(folder)
        for p in prompts:
            predictor.add_new_points_or_box(
                state, p.frame_idx, p.obj_id,
                points=np.asarray(p.points, np.float32) if p.points else None,
                labels=np.asarray(p.labels, np.int32) if p.points else None,
                box=np.asarray(p.box, np.float32) if p.box is not None else None)
        masks = []
        for _, _, logits in predictor.propagate_in_video(state):
            binary = (logits[:, 0] > 0).numpy()
            if keep_masks:
                masks.append(binary)
            frames += 1
    return time.perf_counter() - started, frames


def chunked_features(predictor, data: bytes):
    """(start, stop) -> pending features, encoded in this process: the deployment without an encoder worker."""
    from deployments.range_features import LocalCall
    from models.sam2_video import encode_frames
    from models.video_io import read_frames

    return lambda start, stop: LocalCall(encode_frames(predictor, read_frames(data, start, stop)))


def run_chunked(predictor, data: bytes, prompts: list, chunk: int, prefetch: int) -> tuple[float, int]:
    """The propagator fed by RangeFeatures, range by range, masks kept as RLE: deployments/sam2_video.py's predict."""
    from deployments.range_features import RangeFeatures
    from models.sam2_video import Sam2VideoPropagator
    from models.video_io import probe_video
    from models.video_masks import FrameMasks

    started = time.perf_counter()
    info = probe_video(data)
    encode = chunked_features(predictor, data)
    prop = Sam2VideoPropagator(predictor, info.num_frames, info.height, info.width, prompts, chunk)
    prop.prepare({f: encode(f, f + 1).result()[0] for f in prop.prompt_frames})
    source = RangeFeatures(encode, [(s.start, s.stop) for s in prop.remaining_steps], prefetch)
    masks, frames = FrameMasks(info.height, info.width), 0
    for _ in list(prop.remaining_steps):
        for result in prop.run_step(source.next()):
            masks.add(result.frame_idx, result.obj_ids, result.masks())
            frames += 1
    return time.perf_counter() - started, frames


def per_frame_breakdown(predictor, data: bytes, prompts: list, chunk: int) -> dict:
    """Seconds spent in each stage of the pipeline, run one after the other on one thread."""
    from models.sam2_video import Sam2VideoPropagator, encode_frames
    from models.video_io import probe_video, read_frames
    from models.video_masks import FrameMasks
    from models.video_render import render_range

    info = probe_video(data)
    seconds = {"prepare": 0.0, "decode": 0.0, "encode": 0.0, "propagate": 0.0, "render": 0.0}
    t = time.perf_counter()
    prop = Sam2VideoPropagator(predictor, info.num_frames, info.height, info.width, prompts, chunk)
    # The propagator encodes the prompted frames on their own before the first range, as the deployment does.
    prop.prepare({f: encode_frames(predictor, read_frames(data, f, f + 1))[0] for f in prop.prompt_frames})
    seconds["prepare"] = time.perf_counter() - t
    masks = FrameMasks(info.height, info.width)
    for step in list(prop.remaining_steps):
        t0 = time.perf_counter()
        frames = read_frames(data, step.start, step.stop)
        t1 = time.perf_counter()
        features = encode_frames(predictor, frames)
        t2 = time.perf_counter()
        for result in prop.run_step(features):
            masks.add(result.frame_idx, result.obj_ids, result.masks())
        t3 = time.perf_counter()
        seconds["decode"] += t1 - t0
        seconds["encode"] += t2 - t1
        seconds["propagate"] += t3 - t2
    # The deployment's render, in one piece: the video decoded again in order, masks overlaid, H.264 out.
    t = time.perf_counter()
    render_range(data, 0, info.num_frames, masks, info.fps, apply_mask=True, with_boxes=False)
    seconds["render"] = time.perf_counter() - t
    return {"frames": info.num_frames, "seconds": seconds}


def child_speed(spec: dict) -> dict:
    """Plain predictor (warmed up on a short clip) and the per-frame breakdown, on one thread."""
    one_thread()
    from models.sam2_video import load_sam2_video_predictor

    data = Path(spec["video"]).read_bytes()
    prompts = object_prompts(spec["width"], spec["height"])
    predictor = load_sam2_video_predictor(spec["checkpoint"], device="cpu")
    run_plain(predictor, spec["warm_jpegs"], prompts)  # first calls allocate and pick kernels
    plain_s, frames = run_plain(predictor, spec["jpegs"], prompts)
    breakdown = per_frame_breakdown(predictor, data, prompts, spec["chunk"])
    return {"plain_s": plain_s, "frames": frames, "breakdown": breakdown}


def child_memory(spec: dict) -> dict:
    """One chunked or plain run over a video of spec['frames'] frames; the process's peak RSS."""
    one_thread()
    from models.sam2_video import load_sam2_video_predictor

    prompts = object_prompts(spec["size"], spec["size"])
    predictor = load_sam2_video_predictor(spec["checkpoint"], device="cpu")
    loaded_mb = peak_rss_mb()
    if spec["mode"] == "chunked":
        seconds, frames = run_chunked(predictor, Path(spec["video"]).read_bytes(), prompts, spec["chunk"], spec["prefetch"])
    else:
        # The plain predictor's own state holds every frame; its masks are dropped here, not kept.
        seconds, frames = run_plain(predictor, spec["jpegs"], prompts, keep_masks=False)
    return {"frames": frames, "seconds": seconds, "loaded_mb": loaded_mb, "peak_mb": peak_rss_mb(),
            "hwm_mb": high_water_mb()}


CHILDREN = {"speed": child_speed, "memory": child_memory}


def run_child(spec: dict, work: Path) -> dict:
    """Run one measurement in a fresh interpreter of this file (one torch thread); return its JSON result."""
    out = work / f"child-{time.monotonic_ns()}.json"
    log = out.with_suffix(".log")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # Not exec'd from this process: Linux carries the exec'ing memory's high-water mark into the new
    # program's ru_maxrss, so a child started from this (large) driver would report the driver's peak.
    # sh forks the child from its own small process instead (`; exit` keeps it from exec'ing in place).
    cmd = ["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, str(Path(__file__).resolve()),
           "--child", json.dumps({**spec, "out": str(out)})]
    with log.open("w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not out.exists():
        raise RuntimeError(f"child {spec['task']} failed (rc {rc}):\n{log.read_text()[-3000:]}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------- direct runs
def direct_speed(label: str, checkpoint: Path, clip: dict, chunk: int, work: Path) -> dict:
    result = run_child({"task": "speed", "checkpoint": str(checkpoint), "video": str(clip["video"]),
                        "jpegs": str(clip["jpegs"]), "warm_jpegs": str(clip["warm_jpegs"]),
                        "width": clip["width"], "height": clip["height"], "chunk": chunk}, work)
    result["plain_fps"] = result["frames"] / result["plain_s"]
    b = result["breakdown"]["seconds"]
    print(f"[{label}] plain predictor: {result['frames']} frames in {result['plain_s']:.2f} s = "
          f"{result['plain_fps']:.2f} frames/s; per frame: " + ", ".join(
              f"{k} {1000 * v / result['breakdown']['frames']:.1f} ms" for k, v in b.items() if k != "prepare")
          + f" (load {loadavg()})", flush=True)
    return result


def memory_runs(checkpoint: Path, plan: Plan, chunk: int, prefetch: int, work: Path) -> list[dict]:
    """Peak RSS of the chunked path and of the plain predictor, one fresh process per frame count."""
    rows = []
    size = plan.memory_size
    for frames in plan.memory_frames:
        video = write_video(work / f"memory-{frames}.mp4", frames, size, size)
        row = {"frames": frames, "chunked": run_child({"task": "memory", "mode": "chunked", "checkpoint": str(checkpoint),
                                                       "video": str(video), "size": size, "chunk": chunk,
                                                       "prefetch": prefetch}, work)}
        if frames in plan.plain_memory_frames:
            jpegs = jpeg_folder(work / f"memory-{frames}-jpg", (synthetic_frame(i, size, size) for i in range(frames)))
            row["plain"] = run_child({"task": "memory", "mode": "plain", "checkpoint": str(checkpoint),
                                      "jpegs": str(jpegs), "size": size}, work)
            shutil.rmtree(jpegs, ignore_errors=True)
        for run in (row["chunked"], row.get("plain")):
            if run and abs(run["peak_mb"] - run["hwm_mb"]) > 0.05 * run["hwm_mb"]:
                print(f"[memory] warning: ru_maxrss {run['peak_mb']:.0f} MB but VmHWM {run['hwm_mb']:.0f} MB",
                      flush=True)
        plain = f"{row['plain']['peak_mb']:.0f} MB" if "plain" in row else "not run"
        print(f"[memory] {frames} frames: chunked peak RSS {row['chunked']['peak_mb']:.0f} MB "
              f"({row['chunked']['seconds']:.1f} s), plain {plain}", flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------- served runs
def deploy_video(checkpoint: Path, encoders: int, home: Path, port: int, index: int):
    """Only `fal-ai/sam2/video`: the propagator and `encoders` encoder replicas, one CPU each, no autoscaling."""
    from ray import serve

    from serve.app_builder import build_app
    from serve.config import DEFAULT_CONFIG_PATH, load_config

    fixed = {"num_replicas": 1, "autoscaling_config": None, "num_cpus": 1, "num_gpus": 0}
    endpoint = next(e for e in load_config(DEFAULT_CONFIG_PATH).endpoints if e.id == ENDPOINT).model_dump()
    endpoint["model"] = {**endpoint["model"], "checkpoint": str(checkpoint), "device": "cpu"}
    endpoint["options"] = {**endpoint["options"], **fixed}
    endpoint["workers"] = [{**w, "model": {**w["model"], "checkpoint": str(checkpoint), "device": "cpu"},
                            "options": {**w["options"], **fixed, "num_replicas": encoders}}
                           for w in endpoint["workers"] if w["name"] == ENCODER]
    config = load_config(DEFAULT_CONFIG_PATH, home=str(home), port=port, host="127.0.0.1", api_keys=[API_KEY],
                         endpoints=[endpoint], queue={"actor_name": f"visus-video-bench-queue-{index}"},
                         limits={"sync_timeout_s": 1800}).with_secrets()
    serve.run(build_app(config, has_gpu=False), name=config.app_name, route_prefix="/", blocking=False)
    return config


def http_client(url: str):
    import httpx

    # trust_env=False: loopback only, never through a proxy from the environment.
    return httpx.Client(base_url=url, headers={"Authorization": f"Key {API_KEY}"}, timeout=1800, trust_env=False)


def wait_ready(client, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if client.get("/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("Visus did not become ready")


def sync_run(client, body: dict) -> float:
    started = time.perf_counter()
    response = client.post(f"/{ENDPOINT}", json=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"sync run failed: {response.status_code} {response.text[:500]}")
    return elapsed


def queue_job(client, body: dict) -> tuple[float, list[str]]:
    """Submit, poll the status with logs, fetch the result: (seconds end to end, log messages)."""
    started = time.perf_counter()
    submitted = client.post(f"/queue/{ENDPOINT}", json=body).json()
    while True:
        status = client.get(submitted["status_url"], params={"logs": 1}).json()
        if status["status"] == "COMPLETED":
            break
        time.sleep(0.25)  # slow polls: the gateway and queue actor share the box with the model
    response = client.get(submitted["response_url"])
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"queue job failed: {response.status_code} {response.text[:500]}")
    return elapsed, [log["message"] for log in status.get("logs") or []]


def parse_job_logs(messages: list[str]) -> dict:
    """Per-range propagation and feature-wait seconds and the render time, from the job's status logs."""
    ranges = [RANGE_LOG.search(m) for m in messages]
    ranges = [m for m in ranges if m]
    render = next((RENDER_LOG.search(m) for m in messages if RENDER_LOG.search(m)), None)
    return {"ranges": len(ranges), "range_s": sum(float(m.group(6)) for m in ranges),
            "wait_s": sum(float(m.group(7)) for m in ranges),
            "first_wait_s": float(ranges[0].group(7)) if ranges else float("nan"),
            "render_s": float(render.group(2)) if render else float("nan")}


def box_busy_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def served_run(label: str, checkpoint: Path, encoders: int, body: dict, frames: int, port: int, work: Path,
               index: int) -> dict:
    """Deploy, warm up, time one sync run, then one queue job for its status logs; undeploy."""
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    config = deploy_video(checkpoint, encoders, work / f"home-{index}", port, index)
    try:
        with http_client(url) as client:
            wait_ready(client)
            warm_s = sync_run(client, body)  # loads kernels in the propagator and the encoders
            print(f"[{label}] {encoders} encoder(s): deployed and warm in {time.perf_counter() - started:.0f} s "
                  f"(warm-up run {warm_s:.1f} s)", flush=True)
            load = loadavg()
            busy = box_busy_seconds()
            wall_s = sync_run(client, body)
            cores = (box_busy_seconds() - busy) / wall_s
            job_s, messages = queue_job(client, body)
    finally:
        undeploy(config)
    result = {"encoders": encoders, "wall_s": wall_s, "fps": frames / wall_s, "cores": cores, "load": load,
              "job_s": job_s, "logs": parse_job_logs(messages)}
    print(f"[{label}] {encoders} encoder(s): sync run {wall_s:.2f} s = {result['fps']:.2f} frames/s, "
          f"{cores:.2f} cores busy; queue job {job_s:.2f} s, propagator waited "
          f"{result['logs']['wait_s']:.2f} s for features (load {load})", flush=True)
    return result


# ---------------------------------------------------------------------------------------- report
def markdown(results: list[dict], memory: list[dict], meta: dict) -> str:
    lines = [
        f"Run {meta['date']} on {meta['machine']}{' (--quick)' if meta['quick'] else ''}; "
        f"load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}; "
        f"total {meta['wall_s']:.0f} s.",
        "",
        f"Video: {meta['frames']} frames of {meta['width']}x{meta['height']} at {FPS} fps (H.264, synthetic: a square "
        f"and a disc moving), object 1 from a point and object 2 from a box on frame 0, overlay output "
        f"(`apply_mask`). Served pipeline: ranges of {meta['chunk']} frames, {meta['prefetch']} encoded ahead.",
        "",
        "**Frames per second** (plain: `sam2`'s `init_state` on the frames as JPEGs + the prompts + "
        "`propagate_in_video`, one process, one torch thread, masks only, no output video. Served: one sync run "
        "over HTTP after a warm-up run, end to end, with the output video; propagator one replica, one CPU; "
        "cores busy: the whole box during the run, out of 2)",
        "",
        "| checkpoint | run | seconds | frames/s | vs plain | cores busy | load avg |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        d = r["direct"]
        lines.append(f"| {r['label']} | plain predictor | {fmt(d['plain_s'], 2)} | {fmt(d['plain_fps'], 2)} | 1.00 | "
                     f"one thread | {r['direct_load']} |")
        for s in r["served"]:
            lines.append(f"| {r['label']} | served, {s['encoders']} encoder replica{'s' if s['encoders'] > 1 else ''} | "
                         f"{fmt(s['wall_s'], 2)} | {fmt(s['fps'], 2)} | {fmt(s['fps'] / d['plain_fps'], 2)} | "
                         f"{fmt(s['cores'], 2)} | {s['load']} |")
    lines += [
        "",
        "**Where the time goes, per frame** (ms; one process, one torch thread, the stages run one after the "
        "other with the functions the pipeline uses: `read_frames` per range, `encode_frames`, "
        "`Sam2VideoPropagator.run_step` + RLE, and the overlay render: the video decoded again in order, "
        "`models.video_render.render_range` over the whole video. Prompts: decoding, encoding and prompting frame 0 once, in seconds)",
        "",
        "| checkpoint | decode | encode | propagate | render | total | frames/s in series | "
        "frames/s if encoding were free | prompts s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b = r["direct"]["breakdown"]
        ms = {k: 1000 * v / b["frames"] for k, v in b["seconds"].items()}
        total = ms["decode"] + ms["encode"] + ms["propagate"] + ms["render"]
        lines.append(f"| {r['label']} | {fmt(ms['decode'])} | {fmt(ms['encode'])} | {fmt(ms['propagate'])} | "
                     f"{fmt(ms['render'])} | {fmt(total)} | {fmt(1000 / total, 2)} | "
                     f"{fmt(1000 / (ms['propagate'] + ms['render']), 2)} | {fmt(b['seconds']['prepare'], 2)} |")
    lines += [
        "",
        "**Served wall time, from the status logs** (seconds; one queue job right after the timed sync run. "
        "Ranges: the propagator's per-range lines, summed; waiting: its time blocked on the encoders, of which "
        "the first range's; other: the job's wall time minus ranges and render: probing the video, encoding "
        "the prompted frame, HTTP, queue, storage)",
        "",
        "| checkpoint | encoders | job wall | ranges | of which waiting | first range's wait | render | other | "
        "waiting / wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for s in r["served"]:
            g = s["logs"]
            other = s["job_s"] - g["range_s"] - g["render_s"]
            lines.append(f"| {r['label']} | {s['encoders']} | {fmt(s['job_s'], 2)} | {fmt(g['range_s'], 2)} "
                         f"({g['ranges']}) | {fmt(g['wait_s'], 2)} | {fmt(g['first_wait_s'], 2)} | "
                         f"{fmt(g['render_s'], 2)} | {fmt(other, 2)} | {fmt(100 * g['wait_s'] / s['job_s'], 0)} % |")
    if memory:
        loaded = memory[0]["chunked"]["loaded_mb"]
        lines += [
            "",
            f"**Peak RSS against frame count** (MB, `ru_maxrss` of a fresh process per run; micro checkpoint, "
            f"{meta['memory_size']}x{meta['memory_size']} video. Chunked: `Sam2VideoPropagator` fed by "
            f"`RangeFeatures` encoding in-process, masks kept as RLE, as the deployment runs without an encoder "
            f"worker; plain: `init_state` + `propagate_in_video`, masks dropped. After loading the model: "
            f"{fmt(loaded, 0)} MB)",
            "",
            "| frames | chunked peak RSS MB | plain peak RSS MB |",
            "|---:|---:|---:|",
        ]
        for row in memory:
            plain = row.get("plain", {}).get("peak_mb")
            lines.append(f"| {row['frames']} | {fmt(row['chunked']['peak_mb'], 0)} | "
                         f"{'not run' if plain is None else fmt(plain, 0)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- main
def speed_clip(plan: Plan, work: Path) -> dict:
    """The speed video, its frames as JPEGs for the plain predictor (decoded, so both see the same
    pixels up to JPEG), and a short warm-up folder."""
    from models.video_io import iter_frames

    video = write_video(work / "clip.mp4", plan.frames, plan.width, plan.height)
    jpegs = jpeg_folder(work / "clip-jpg", (frame for _, frame in iter_frames(video.read_bytes())))
    warm = first_frames(jpegs, work / "clip-warm-jpg", WARM_FRAMES)
    return {"video": video, "jpegs": jpegs, "warm_jpegs": warm, "width": plan.width, "height": plan.height}


def main(argv: list[str] | None = None) -> int:
    parser = bench.benchmark_arguments(__doc__.split("\n\n")[0], "short video, small frame counts (smoke run); prints only",
                                       "videos, checkpoints, homes")
    parser.add_argument("--only", choices=["micro", "hiera_t@256"], help="benchmark one checkpoint only")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the peak RSS runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        Path(spec["out"]).write_text(json.dumps(CHILDREN[spec["task"]](spec)))
        return 0

    plan = QUICK if args.quick else FULL
    output = bench.output_file(args)
    started = time.perf_counter()
    load_start = loadavg()
    work = Path(tempfile.mkdtemp(prefix="visus-video-bench-"))
    print(f"work folder {work}; load average {load_start}", flush=True)

    from models.tiny import write_random_sam2, write_tiny_sam2

    model_dir = work / "models" / "sam2"
    checkpoints = [("micro", write_tiny_sam2(model_dir)), ("hiera_t@256", write_random_sam2(model_dir))]
    micro = checkpoints[0][1]
    if args.only:
        checkpoints = [c for c in checkpoints if c[0] == args.only]
    chunk, prefetch = pipeline_settings()
    clip = speed_clip(plan, work)
    body = request_body(clip["video"].read_bytes(), plan.width, plan.height)

    # Direct measurements first, in fresh processes, while no Ray cluster of ours runs.
    results = []
    for label, checkpoint in checkpoints:
        direct_load = loadavg()
        results.append({"label": label, "checkpoint": checkpoint, "direct_load": direct_load,
                        "direct": direct_speed(label, checkpoint, clip, chunk, work)})
    memory = [] if args.skip_memory else memory_runs(micro, plan, chunk, prefetch, work)

    bench.isolate_ray_ports(DIRECT_INGRESS_HTTP, DIRECT_INGRESS_GRPC)
    import ray
    from ray import serve

    port = free_port()
    index = 0
    try:
        start_ray(port)
        for r in results:
            r["served"] = []
            for encoders in plan.encoders:
                r["served"].append(served_run(r["label"], r["checkpoint"], encoders, body, plan.frames, port, work, index))
                index += 1
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "quick": args.quick,
            "load_start": load_start, "load_end": loadavg(), "wall_s": time.perf_counter() - started,
            "frames": plan.frames, "width": plan.width, "height": plan.height, "chunk": chunk, "prefetch": prefetch,
            "memory_size": plan.memory_size}
    table = markdown(results, memory, meta)
    for r in results:
        r["checkpoint"] = str(r["checkpoint"])
    bench.publish(table, {"meta": meta, "results": results, "memory": memory}, work, output, MARK_START, MARK_END)
    bench.tidy(args.keep, work, [work / "models", *work.glob("home-*"), *work.glob("*-jpg")],
               f"results.json and the child logs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
