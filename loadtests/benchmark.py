"""Benchmark `fal-ai/sam2/image`: what does serving it through Visus cost, compared with calling the model directly?

    .venv/bin/python loadtests/benchmark.py            # full run (about 7 minutes on 2 cores); rewrites BENCHMARKS.md
    .venv/bin/python loadtests/benchmark.py --quick    # smoke run, every phase shortened; prints only

For each checkpoint (the tiny "micro" test model, and a random-weight sam2.1_hiera_t at image size 256,
which has the real architecture and so the real cost) it, in ONE run:

1. starts a Visus stack in this process, as tests/conftest.py does (its own local Ray cluster, its own
   temp home, a free loopback port), serving only `fal-ai/sam2/image` from that checkpoint with ONE
   replica reserving ONE CPU (torch then runs one thread in it);
2. measures direct in-process calls while that stack sits idle: decode the PNG, segment, render the
   mask, encode the PNG; sequentially on one torch thread. That is the work the replica does per
   request, minus what only a server does (JSON, base64 of the data URI, HTTP, Ray hops, storage);
3. runs Locust as subprocesses (never in this process: Locust's gevent patching and Ray crash
   together), headless, `--csv` into a temp folder: a 1-user sync phase (latency), a sync phase and a
   queue-flow phase with as many users as the replica takes requests (throughput), and a status-poll
   phase (polls/s of the gateway + queue actor, no model work);
4. prints a markdown table and rewrites the section between the `bench:sam2-image` markers in
   BENCHMARKS.md.

The fair comparison on a 2-core box: the model gets exactly one core in both cases (direct: one
torch thread in this process; served: one replica with num_cpus=1, whose OMP_NUM_THREADS is 1). The
second core is what everything else shares: the Ray proxy, the gateway, the queue actor, Ray's own
daemons, the load generator, and the replica's non-model work (base64, PNG decode/encode, storage
write), which the replica can overlap with another request's model call since torch releases the GIL.
The direct baseline is sequential: it is what one core does with the model, the ceiling a one-CPU
replica is measured against. Ray renices its workers to 15 by default; this benchmark sets
RAY_worker_niceness=0 so the replica runs at the same priority as the direct calls (otherwise any
other process on the box, the load generator included, pre-empts only the served side).

Latencies are exact (each request's own timing, written by the locustfile), not Locust's CSV
percentiles, which round to 10 ms above 100 ms. Throughputs are steady-state: the first seconds of
each phase are left out. Also reported: where the CPU went during each phase, per process.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
MARK_START = "<!-- bench:sam2-image:start -->"
MARK_END = "<!-- bench:sam2-image:end -->"

ENDPOINT = "fal-ai/sam2/image"
API_KEY = "bench-key-id:bench-key-secret"
MAX_ONGOING = 4  # the replica's max_ongoing_requests, as in the default config
LOAD_USERS = MAX_ONGOING  # enough users to keep the replica always busy
POLL_USERS = 16

# The serving platform's processes (everything but the model replica, the load generator and this driver).
PLATFORM = ("gateway", "proxy", "queue actor", "controller", "ray daemons", "ray other")

GOAL_THROUGHPUT_PCT = 90.0
GOAL_ADDED_P50_MS = 10.0
GOAL_POLLS_PER_S = 500.0


@dataclass(frozen=True)
class Durations:
    direct_s: dict  # checkpoint label -> seconds of direct calls
    pairs: dict  # checkpoint label -> direct/served pairs for the added latency
    sync1_s: int
    sync_s: int
    queue_s: int
    poll_s: int
    warmup_s: float  # left out of every phase's steady-state figures


FULL = Durations(direct_s={"micro": 15, "hiera_t@256": 40}, pairs={"micro": 300, "hiera_t@256": 60}, sync1_s=25, sync_s=40, queue_s=40, poll_s=15,
                 warmup_s=3.0)
QUICK = Durations(direct_s={"micro": 4, "hiera_t@256": 8}, pairs={"micro": 40, "hiera_t@256": 8}, sync1_s=6, sync_s=8, queue_s=8, poll_s=5, warmup_s=1.0)


# ---------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def locust_image_png() -> bytes:
    """The very image the Locust users send: `make_image_png` taken from locustfile.py.

    The locustfile cannot be imported here (importing locust gevent-patches this process, which runs
    Ray), so the one function is compiled out of its source.
    """
    import numpy as np
    from PIL import Image

    tree = ast.parse(LOCUSTFILE.read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "make_image_png"]
    size = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "IMAGE_SIZE"]
    namespace = {"io": io, "np": np, "Image": Image}
    exec(compile(ast.Module(body=size + nodes, type_ignores=[]), str(LOCUSTFILE), "exec"), namespace)
    return namespace["make_image_png"]()


class CpuMeter:
    """CPU seconds per component (Ray worker by its process title, Locust, the rest of the box)."""

    LABELS = (("bin/locust", "locust"), ("ServeReplica:visus:gateway", "gateway"), ("ServeReplica:", "model replica"),
              ("ProxyActor", "proxy"), ("ServeController", "controller"), ("JobQueue", "queue actor"),
              ("gcs_server", "ray daemons"), ("raylet", "ray daemons"), ("ray::", "ray other"),
              ("ray/", "ray daemons"))

    def __init__(self):
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self._labels: dict[int, str | None] = {}

    def _label(self, proc) -> str | None:
        if proc.pid == self.me.pid:
            return "driver"
        if proc.pid in self._labels:
            return self._labels[proc.pid]
        try:
            cmd = " ".join(proc.cmdline())
        except (self.psutil.Error, OSError):
            return None
        label = next((lbl for needle, lbl in self.LABELS if needle in cmd), "ray other" if "ray" in cmd else None)
        if "default_worker.py" not in cmd:  # a worker not yet renamed by its process title may change label
            self._labels[proc.pid] = label
        return label

    def snapshot(self) -> dict:
        per: dict[int, tuple[str, float]] = {}
        for proc in [self.me, *self.me.children(recursive=True)]:
            label = self._label(proc)
            if label is None:
                continue
            try:
                t = proc.cpu_times()
            except (self.psutil.Error, OSError):
                continue
            per[proc.pid] = (label, t.user + t.system)
        box = self.psutil.cpu_times()
        busy = box.user + box.nice + box.system + box.irq + box.softirq + getattr(box, "steal", 0.0)
        return {"t": time.time(), "per": per, "busy": busy}

    @staticmethod
    def diff(a: dict, b: dict) -> dict:
        """Cores used on average per component between snapshots a and b (1.0 = one core busy)."""
        wall = b["t"] - a["t"]
        if wall <= 0:
            return {}
        used: dict[str, float] = {}
        for pid, (label, after) in b["per"].items():
            if pid not in a["per"]:
                continue  # started between the snapshots: only part of its time is in the window
            used[label] = used.get(label, 0.0) + max(0.0, after - a["per"][pid][1])
        ours = sum(used.values())
        used["outside this benchmark"] = max(0.0, (b["busy"] - a["busy"]) - ours)
        return {k: v / wall for k, v in used.items() if v / wall >= 0.005}

    @staticmethod
    def window(snapshots: list[dict], t0: float, t1: float) -> dict:
        """CPU use between the first snapshot at or after t0 and the last one at or before t1."""
        inside = [s for s in snapshots if t0 <= s["t"] <= t1]
        if len(inside) < 2:
            inside = snapshots
        return CpuMeter.diff(inside[0], inside[-1]) if len(inside) >= 2 else {}


# ---------------------------------------------------------------------------------------- direct
def direct_caller(checkpoint: Path, png: bytes):
    """One in-process call on one torch thread doing the replica's per-request work (warmed up)."""
    import torch

    from models.image_io import decode_image, encode_image
    from models.mask_render import render_mask
    from models.sam2_image import Sam2ImageSegmenter

    torch.set_num_threads(1)
    segmenter = Sam2ImageSegmenter.from_checkpoint(checkpoint, device="cpu")
    point = [(128.0, 128.0)]

    def call() -> bytes:
        image = decode_image(png)
        mask = segmenter.segment(image, point, [1], [])
        return encode_image(render_mask(mask, image), "png")[0]

    for _ in range(3):  # warm-up: first calls allocate and pick kernels
        call()
    return call


def direct_bench(checkpoint: Path, png: bytes, seconds: float) -> dict:
    """Sequential in-process calls: the direct throughput and latency."""
    call = direct_caller(checkpoint, png)
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 20:
        t = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - start
    return {"calls": len(latencies), "per_s": len(latencies) / elapsed,
            "p50": pct(latencies, 50), "p99": pct(latencies, 99), "mean": sum(latencies) / len(latencies)}


def paired_latency(checkpoint: Path, png: bytes, url: str, pairs: int) -> dict:
    """A direct call, then the same request as a served sync run, `pairs` times in turn.

    Both halves of a pair see the same state of the box, so the per-pair difference is the latency
    the platform adds, free of the drift between phases measured minutes apart.
    """
    import base64

    import httpx

    call = direct_caller(checkpoint, png)
    body = {"image_url": "data:image/png;base64," + base64.b64encode(png).decode(),
            "prompts": [{"x": 128, "y": 128, "label": 1}]}
    direct, served = [], []
    with httpx.Client(base_url=url, headers={"Authorization": f"Key {API_KEY}"}, timeout=300) as client:
        client.post(f"/{ENDPOINT}", json=body).raise_for_status()  # open the keep-alive connection
        for _ in range(pairs):
            t = time.perf_counter()
            call()
            direct.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            client.post(f"/{ENDPOINT}", json=body).raise_for_status()
            served.append((time.perf_counter() - t) * 1000)
    added = [s - d for s, d in zip(served, direct)]
    return {"pairs": pairs, "direct_p50": pct(direct, 50), "served_p50": pct(served, 50),
            "added_p50": pct(added, 50), "added_p99": pct(added, 99)}


# ---------------------------------------------------------------------------------------- the stack
def start_ray(port: int):
    # Workers at the same priority as the direct calls (Ray's default renices them to 15).
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from serve.ray_env import apply_ray_env_defaults

    apply_ray_env_defaults()  # the settings `make serve` runs with
    import ray
    from ray import serve

    # A cluster of our own; 4 logical CPUs leave scheduling room (the box has 2 physical cores: the
    # replica's torch thread count, not Ray's bookkeeping, is what pins the model to one core).
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="visus",
             _node_ip_address="127.0.0.1", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})


def deploy(checkpoint: Path, home: Path, port: int, index: int):
    from ray import serve

    from serve.app_builder import build_app
    from serve.config import DEFAULT_CONFIG_PATH, load_config

    base = load_config(DEFAULT_CONFIG_PATH)
    endpoint = next(e for e in base.endpoints if e.id == ENDPOINT).model_dump()
    endpoint["model"] = {**endpoint["model"], "checkpoint": str(checkpoint), "device": "cpu"}
    endpoint["options"] = {**endpoint["options"], "num_replicas": 1, "autoscaling_config": None,
                           "num_cpus": 1, "num_gpus": 0, "max_ongoing_requests": MAX_ONGOING}
    config = load_config(DEFAULT_CONFIG_PATH, home=str(home), port=port, host="127.0.0.1", api_keys=[API_KEY],
                         endpoints=[endpoint], queue={"actor_name": f"visus-bench-queue-{index}"},
                         limits={"sync_timeout_s": 300}).with_secrets()
    serve.run(build_app(config, has_gpu=False), name=config.app_name, route_prefix="/", blocking=False)
    return config


def undeploy(config) -> None:
    import ray
    from ray import serve

    serve.delete(config.app_name)
    try:
        ray.kill(ray.get_actor(config.queue.actor_name, namespace=config.queue.namespace), no_restart=True)
    except ValueError:
        pass


def wait_ready_and_warm(url: str) -> None:
    import httpx

    headers = {"Authorization": f"Key {API_KEY}"}
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(f"{url}/readyz", headers=headers, timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            raise RuntimeError("Visus did not become ready")
        time.sleep(0.5)
    import base64

    body = {"image_url": "data:image/png;base64," + base64.b64encode(locust_image_png()).decode(),
            "prompts": [{"x": 128, "y": 128, "label": 1}]}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        for _ in range(3):
            r = client.post(f"/{ENDPOINT}", json=body)
            r.raise_for_status()
        submitted = client.post(f"/queue/{ENDPOINT}", json=body).json()
        status_path = "/" + submitted["status_url"].split("/", 3)[3]
        while client.get(status_path).json()["status"] != "COMPLETED":
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------- Locust
@dataclass
class Phase:
    name: str
    user_class: str
    users: int
    run_s: int
    samples: list = field(default_factory=list)
    failures: int = 0
    requests: int = 0
    cpu: dict = field(default_factory=dict)
    load: str = ""
    rc: int = 0

    def ok(self, request_type: str, name: str, warmup_s: float) -> tuple[list[float], list[float]]:
        """(latencies ms, end times s) of successful requests, the first warmup_s seconds left out."""
        rows = [s for s in self.samples if s[0] == request_type and s[1] == name and s[4]]
        if not rows:
            return [], []
        t0 = min(s[2] for s in self.samples) + warmup_s
        kept = [s for s in rows if s[2] >= t0] or rows
        return [s[3] for s in kept], [s[2] + s[3] / 1000 for s in kept]

    def rate(self, request_type: str, name: str, warmup_s: float) -> float:
        """Steady-state completions per second: completions after the warm-up over their time span."""
        rows = [s for s in self.samples if s[0] == request_type and s[1] == name and s[4]]
        ends = sorted(s[2] + s[3] / 1000 for s in rows)
        if len(ends) < 3:
            return float("nan")
        t0 = min(s[2] for s in self.samples) + warmup_s
        first = next((i for i, e in enumerate(ends) if e >= t0), 0)
        if len(ends) - first < 3:
            first = 0
        span = ends[-1] - ends[first]
        return (len(ends) - 1 - first) / span if span > 0 else float("nan")


def run_locust(phase: Phase, url: str, out: Path, meter: CpuMeter, warmup_s: float,
               locustfile: Path = LOCUSTFILE) -> Phase:
    locust = Path(sys.executable).with_name("locust")
    prefix = out / phase.name
    samples = out / f"{phase.name}.samples.json"
    cmd = [str(locust), "-f", str(locustfile), "--headless", "-u", str(phase.users), "-r", str(phase.users),
           "--run-time", f"{phase.run_s}s", "--host", url, "--csv", str(prefix), "--only-summary",
           "--stop-timeout", "60", "--loglevel", "WARNING", phase.user_class]
    env = {**os.environ, "VISUS_API_KEY": API_KEY, "VISUS_LOCUST_SAMPLES": str(samples),
           "VISUS_ENDPOINT": ENDPOINT}
    phase.load = loadavg()
    log = (out / f"{phase.name}.log").open("w")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    snapshots = [meter.snapshot()]
    deadline = time.time() + phase.run_s + 180
    while proc.poll() is None:  # CPU snapshots every half second; the steady window is picked afterwards
        if time.time() > deadline:
            proc.kill()
        time.sleep(0.5)
        snapshots.append(meter.snapshot())
    log.close()
    phase.rc = proc.returncode
    if samples.exists():
        phase.samples = json.loads(samples.read_text())["samples"]
    stats = prefix.with_name(prefix.name + "_stats.csv")
    if stats.exists():
        with stats.open() as fh:
            for row in csv.DictReader(fh):
                if row["Name"] == "Aggregated":
                    phase.requests = int(row["Request Count"])
                    phase.failures = int(row["Failure Count"])
    if not phase.samples:
        tail = (out / f"{phase.name}.log").read_text()[-3000:]
        raise RuntimeError(f"locust phase {phase.name} produced no samples (rc {proc.returncode}):\n{tail}")
    t0 = min(s[2] for s in phase.samples) + warmup_s
    t1 = max(s[2] + s[3] / 1000 for s in phase.samples)
    phase.cpu = CpuMeter.window(snapshots, t0, t1)
    return phase


# ---------------------------------------------------------------------------------------- one checkpoint
def bench_checkpoint(label: str, checkpoint: Path, index: int, port: int, work: Path, out: Path,
                     durations: Durations, meter: CpuMeter, png: bytes) -> dict:
    url = f"http://127.0.0.1:{port}"
    t_deploy = time.perf_counter()
    config = deploy(checkpoint, work / f"home-{index}", port, index)
    wait_ready_and_warm(url)
    print(f"[{label}] deployed and warm in {time.perf_counter() - t_deploy:.0f} s (load {loadavg()})", flush=True)

    load_direct = loadavg()
    direct = direct_bench(checkpoint, png, durations.direct_s[label])
    direct["load"] = load_direct
    print(f"[{label}] direct: {direct['per_s']:.2f} calls/s, p50 {direct['p50']:.1f} ms, "
          f"p99 {direct['p99']:.1f} ms ({direct['calls']} calls)", flush=True)
    paired = paired_latency(checkpoint, png, url, durations.pairs[label])
    print(f"[{label}] paired: direct p50 {paired['direct_p50']:.1f} ms, sync run p50 {paired['served_p50']:.1f} ms, "
          f"added p50 {paired['added_p50']:.1f} ms ({paired['pairs']} pairs)", flush=True)

    tag = re.sub(r"[^a-z0-9]+", "_", label.lower())
    phases = {
        "sync1": Phase(f"{tag}_sync1", "SyncRunUser", 1, durations.sync1_s),
        "sync": Phase(f"{tag}_sync{LOAD_USERS}", "SyncRunUser", LOAD_USERS, durations.sync_s),
        "queue": Phase(f"{tag}_queue{LOAD_USERS}", "QueueFlowUser", LOAD_USERS, durations.queue_s),
        "poll": Phase(f"{tag}_poll{POLL_USERS}", "StatusPollUser", POLL_USERS, durations.poll_s),
    }
    for key, phase in phases.items():
        run_locust(phase, url, out, meter, durations.warmup_s)
        print(f"[{label}] {phase.name}: {phase.requests} requests, {phase.failures} failures, "
              f"load {phase.load}", flush=True)
    undeploy(config)

    w = durations.warmup_s
    sync1_lat, _ = phases["sync1"].ok("POST", "sync run", w)
    sync_lat, _ = phases["sync"].ok("POST", "sync run", w)
    job_lat, _ = phases["queue"].ok("JOB", "e2e sam2_image", w)
    status_lat, _ = phases["queue"].ok("GET", "status", w)
    poll_lat, _ = phases["poll"].ok("GET", "status (completed)", w)
    served = phases["sync"].rate("POST", "sync run", w)
    jobs = phases["queue"].rate("JOB", "e2e sam2_image", w)
    result = {
        "label": label, "checkpoint": checkpoint.name, "direct": direct, "paired": paired,
        "sync1": {"p50": pct(sync1_lat, 50), "p99": pct(sync1_lat, 99), "n": len(sync1_lat),
                  "per_s": phases["sync1"].rate("POST", "sync run", w), "load": phases["sync1"].load},
        "sync": {"per_s": served, "p50": pct(sync_lat, 50), "p99": pct(sync_lat, 99), "load": phases["sync"].load},
        "queue": {"per_s": jobs, "p50": pct(job_lat, 50), "p99": pct(job_lat, 99), "load": phases["queue"].load,
                  "status_p50": pct(status_lat, 50),
                  "status_per_s": phases["queue"].rate("GET", "status", w)},
        "poll": {"per_s": phases["poll"].rate("GET", "status (completed)", w), "p50": pct(poll_lat, 50),
                 "p99": pct(poll_lat, 99), "load": phases["poll"].load},
        "failures": {p.name: (p.failures, p.requests) for p in phases.values()},
        "cpu": {key: p.cpu for key, p in phases.items()},
    }
    rates = {"sync1": result["sync1"]["per_s"], "sync": served, "queue": jobs, "poll": result["poll"]["per_s"]}
    result["cpu_per_unit"] = {key: {"platform": 1000 * sum(phases[key].cpu.get(c, 0.0) for c in PLATFORM) / rate,
                                    "replica": 1000 * phases[key].cpu.get("model replica", 0.0) / rate}
                              for key, rate in rates.items() if rate == rate and rate > 0}
    result["served_pct"] = 100 * served / direct["per_s"]
    result["queue_pct"] = 100 * jobs / direct["per_s"]
    result["added_p50"], result["added_p99"] = paired["added_p50"], paired["added_p99"]
    return result


# ---------------------------------------------------------------------------------------- report
def f(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"Run {meta['date']} on {meta['machine']}{' (--quick)' if meta['quick'] else ''}; "
        f"load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}; "
        f"total {meta['wall_s']:.0f} s.",
        "",
        "**Throughput** (one replica, one CPU, one torch thread, vs. sequential direct calls on one thread; "
        f"{LOAD_USERS} concurrent Locust users = the replica's max_ongoing_requests)",
        "",
        "| checkpoint | direct calls/s | served sync runs/s | served / direct | queue jobs/s | queue / direct |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['label']} | {f(r['direct']['per_s'], 2)} | {f(r['sync']['per_s'], 2)} | "
                     f"{f(r['served_pct'], 0)} % | {f(r['queue']['per_s'], 2)} | {f(r['queue_pct'], 0)} % |")
    lines += [
        "",
        "**Latency** (ms. Added: a direct call and the same request as a sync run, one after the other, "
        "repeated; the p50 / p99 of the per-pair difference. Then the direct phase and a sync run from 1 "
        "Locust user, so nothing queues, measured apart)",
        "",
        "| checkpoint | pairs: direct p50 / sync run p50 | added p50 / p99 | direct p50 / p99 | "
        f"sync run p50 / p99, 1 user | sync run p50 / p99 at {LOAD_USERS} users | queue job e2e p50 / p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        d, p, s1, s, q = r["direct"], r["paired"], r["sync1"], r["sync"], r["queue"]
        lines.append(f"| {r['label']} | {f(p['direct_p50'])} / {f(p['served_p50'])} | "
                     f"{f(r['added_p50'])} / {f(r['added_p99'])} | {f(d['p50'])} / {f(d['p99'])} | "
                     f"{f(s1['p50'])} / {f(s1['p99'])} | {f(s['p50'])} / {f(s['p99'])} | {f(q['p50'])} / {f(q['p99'])} |")
    lines += [
        "",
        f"**Status polls** ({POLL_USERS} Locust users polling one completed request, no wait; no model work)",
        "",
        "| stack serving | polls/s | p50 / p99 ms | status polls/s during the queue phase (p50 ms) |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        p, q = r["poll"], r["queue"]
        lines.append(f"| {r['label']} | {f(p['per_s'], 0)} | {f(p['p50'])} / {f(p['p99'])} | "
                     f"{f(q['status_per_s'], 0)} ({f(q['status_p50'])}) |")

    goal = next((r for r in results if r["label"] == "hiera_t@256"), None)
    if goal is not None:
        def mark(ok: bool) -> str:
            return "met" if ok else "**missed**"

        lines += [
            "",
            "**Goals** (hiera_t@256; reported, not asserted)",
            "",
            f"- served throughput >= {GOAL_THROUGHPUT_PCT:.0f} % of direct: {f(goal['served_pct'], 0)} % "
            f"(queue flow {f(goal['queue_pct'], 0)} %): {mark(goal['served_pct'] >= GOAL_THROUGHPUT_PCT)}",
            f"- added p50 < {GOAL_ADDED_P50_MS:.0f} ms for sync runs: {f(goal['added_p50'])} ms "
            f"(p99 {f(goal['added_p99'])} ms): {mark(goal['added_p50'] < GOAL_ADDED_P50_MS)}",
            f"- >= {GOAL_POLLS_PER_S:.0f} status polls/s: {f(goal['poll']['per_s'], 0)}/s: "
            f"{mark(goal['poll']['per_s'] >= GOAL_POLLS_PER_S)}",
        ]

    lines += [
        "",
        "**Where the CPU went** (cores busy on average during each Locust phase; the box has 2)",
        "",
    ]
    labels = ["model replica", "gateway", "proxy", "queue actor", "controller", "ray daemons", "ray other",
              "driver", "locust", "outside this benchmark"]
    lines.append("| checkpoint / phase | load avg | platform CPU ms per unit | replica CPU ms per unit | "
                 + " | ".join(labels) + " |")
    lines.append("|---|---|---:|---:|" + "---:|" * len(labels))
    for r in results:
        for key, title in (("sync1", "sync run, 1 user"), ("sync", f"sync run, {LOAD_USERS} users"),
                           ("queue", f"queue job, {LOAD_USERS} users"), ("poll", "status poll")):
            cpu = r["cpu"][key]
            per = r.get("cpu_per_unit", {}).get(key, {})
            lines.append(f"| {r['label']} / {title} | {r[key]['load']} | {f(per.get('platform', float('nan')))} | "
                         f"{f(per.get('replica', float('nan')))} | "
                         + " | ".join(f(cpu.get(lbl, 0.0), 2) for lbl in labels) + " |")
    lines += ["", "Platform = " + ", ".join(PLATFORM) + "; the unit is the phase's sync run, queue job "
              "(submit + polls + result) or status poll. CPU time depends far less on the load of the box "
              "than latency does."]
    failures = [(name, fails, total) for r in results for name, (fails, total) in r["failures"].items() if fails]
    lines += ["", "Failed requests: " + (", ".join(f"{n} {a}/{b}" for n, a, b in failures) if failures else "none") + "."]
    return "\n".join(lines) + "\n"


INTRO = f"""# Benchmarks

What serving a model through Visus costs, compared with calling the same model in-process.
`loadtests/benchmark.py` measures, for `fal-ai/sam2/image` and two checkpoints (the tiny "micro" test
model, and a random-weight `sam2.1_hiera_t` at image size 256, the real architecture and cost):

- **direct**: sequential in-process calls on one torch thread doing the replica's per-request work
  (decode a 256x256 PNG, segment from one point, render the mask, encode it as PNG);
- **served**: the same requests over HTTP through a local Visus stack with the Ray settings `make
  serve` uses (`serve/ray_env.py`: Ray Serve's HAProxy and direct replica ingress; the gateway, one
  model replica reserving one CPU with one torch thread, the queue actor), driven by Locust
  (`loadtests/locustfile.py`): sync runs, the queue flow (submit, poll every 50 ms, result), and
  status polls of a completed request;
- the ratios: served throughput / direct throughput, the latency the platform adds to a sync run
  (a direct call and the same request served, one after the other and repeated: the median of the
  per-pair differences), and status polls per second.

The model gets one core in both cases; the platform, the load generator and Ray share the second.
Goals: with hiera_t@256, served throughput >= {GOAL_THROUGHPUT_PCT:.0f} % of direct, added p50 <
{GOAL_ADDED_P50_MS:.0f} ms for sync runs, >= {GOAL_POLLS_PER_S:.0f} status polls/s.

Reproduce with `make bench` (or `.venv/bin/python loadtests/benchmark.py`; `--quick` for a smoke run
that only prints). The figures are from one run on a small shared machine: read the ratios, not the
absolute numbers, and note the load average printed with them.

{MARK_START}
{MARK_END}
"""


def write_section(path: Path, body: str, start: str = MARK_START, end: str = MARK_END,
                  intro: str | None = None, after: str | None = None) -> None:
    """Put `body` between the `start`/`end` markers of `path`. Missing markers are added: `intro` (a
    heading and text holding both markers) right after the `after` marker when there is one, else at the end."""
    text = path.read_text() if path.exists() else INTRO
    if start not in text or end not in text:
        section = intro or f"{start}\n{end}\n"
        if after and after in text:
            head, tail = text.split(after, 1)
            text = f"{head}{after}\n\n{section}{tail.lstrip(chr(10))}"
        else:
            text = text.rstrip("\n") + "\n\n" + section
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}{end}{tail}")


def isolate_ray_ports(direct_http: tuple[int, int], direct_grpc: tuple[int, int]) -> None:
    """Ports of our own for everything Ray Serve would otherwise take from fixed per-host defaults.

    For a benchmark cluster next to another one on this box: HAProxy's stats/metrics ports, the
    fallback proxy and the direct-ingress ranges are fixed per host, and HAProxy would otherwise
    route to the other cluster's replicas. The GCS port is picked free by `ray.init` unless pinned.
    """
    from serve.ray_env import apply_ray_env_defaults

    apply_ray_env_defaults()
    os.environ.pop("RAY_GCS_SERVER_PORT", None)
    os.environ.update({
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()), "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct_http[0]),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct_http[1]),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(direct_grpc[0]),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(direct_grpc[1]),
    })


def machine() -> str:
    import platform

    import psutil

    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {mem:.0f} GiB, no GPU"


def benchmark_arguments(description: str, quick_help: str = "shorten every phase (smoke run); prints only",
                        keep_what: str = "checkpoints, homes") -> argparse.ArgumentParser:
    """The options every benchmark script takes: --quick, --output, --keep."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown file to rewrite the section of (default: BENCHMARKS.md, unless --quick)")
    parser.add_argument("--keep", action="store_true", help=f"keep the temp folder ({keep_what})")
    return parser


def output_file(args: argparse.Namespace) -> Path | None:
    """Where the results go: --output, else BENCHMARKS.md, except for a --quick smoke run."""
    return args.output or (None if args.quick else BENCHMARKS_MD)


def publish(table: str, record: dict, results_dir: Path, output: Path | None, start: str, end: str,
            intro: str | None = None, after: str | None = None) -> None:
    """Print the section, keep the raw figures (`record`) as results.json, rewrite the section in `output`."""
    print()
    print(table)
    (results_dir / "results.json").write_text(json.dumps(record, indent=2))
    if output is not None:
        write_section(output, table, start, end, intro=intro, after=after)
        print(f"wrote {output}")


def tidy(keep: bool, work: Path, remove: list[Path], kept: str) -> None:
    """Remove the bulky parts of the work folder (checkpoints, homes) unless --keep."""
    if keep:
        print(f"kept {work}")
        return
    for path in remove:
        shutil.rmtree(path, ignore_errors=True)
    print(kept)


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = benchmark_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["micro", "hiera_t@256"], help="benchmark one checkpoint only")
    args = parser.parse_args(argv)
    durations = QUICK if args.quick else FULL
    output = output_file(args)

    started = time.perf_counter()
    load_start = loadavg()
    work = Path(tempfile.mkdtemp(prefix="visus-bench-"))
    out = work / "locust"
    out.mkdir()
    print(f"work folder {work} (Locust CSVs in {out}); load average {load_start}", flush=True)

    from models.tiny import write_random_sam2, write_tiny_sam2

    model_dir = work / "models" / "sam2"
    checkpoints = [("micro", write_tiny_sam2(model_dir)), ("hiera_t@256", write_random_sam2(model_dir))]
    if args.only:
        checkpoints = [c for c in checkpoints if c[0] == args.only]
    png = locust_image_png()

    import ray
    from ray import serve

    port = free_port()
    meter = CpuMeter()
    results = []
    try:
        start_ray(port)
        for index, (label, checkpoint) in enumerate(checkpoints):
            results.append(bench_checkpoint(label, checkpoint, index, port, work, out, durations, meter, png))
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "quick": args.quick,
            "load_start": load_start, "load_end": loadavg(), "wall_s": time.perf_counter() - started}
    publish(markdown(results, meta), {"meta": meta, "results": results}, out, output, MARK_START, MARK_END)
    tidy(args.keep, work, [work / "models", *work.glob("home-*")], f"Locust CSVs and results.json kept in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
