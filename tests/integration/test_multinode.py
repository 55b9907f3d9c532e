"""Visus on a two-node Ray cluster on one machine, and a node that dies mid-job (issue 7, item 4).

A Ray head (custom resource `visus_head`) and a second node (`visus_node2`) run as separate
`ray start --block` processes, each in a session of its own, with its own loopback address, temp dir
and ports, and the Ray env of serve/ray_env.py (HAProxy + direct ingress). Only `fal-ai/sam2/video` is deployed:
its propagator is pinned to node 2 (`options.resources: {visus_node2: 1}`), its encoder worker has
two replicas and each node offers one `visus_encoder` slot, so there is one encoder per node; the
gateway is pinned to the head, where the Serve controller and the (HeadOnly) HAProxy run.

The tests run a video job through the queue API and see its ranges encoded on both nodes (the
encoder replicas' access logs, which are written under each node's own temp dir), then kill node 2
(SIGKILL to all its processes at once: a crash, not a drain) while a longer job propagates, watch
the job's status answer all the while, start node 2 again and see the job finish from its
checkpoint: once with the job queue actor on node 2 (it dies too and restarts on the head from its
journal), once with it on the head (it sees the replica lost and dispatches the job again).

This module starts its own cluster and must not share a process with the session's stack (conftest's
`visus` fixture): `make test` runs it in a pytest call of its own (`pytest -m multinode`). Anything
that starts Ray on a shared machine goes through the lock: `flock /tmp/visus-ray.lock ...`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import API_KEY, free_port
from tests.helpers import data_uri, lossless_video, moving_squares

pytestmark = [pytest.mark.integration, pytest.mark.multinode]

RAY = Path(sys.executable).with_name("ray")
VIDEO = "fal-ai/sam2/video"
PROPAGATOR = "fal_ai__sam2__video"
ENCODER = "sam2_video_encoder"
CHUNK = 4  # frames per range
NODE_CPUS = 2
# Each node its own loopback address, as two machines have two addresses. Not 127.0.0.1: Ray rewrites
# that (and localhost) to this machine's outward IP, and its processes would talk over that instead.
HEAD_IP, NODE2_IP = "127.0.0.2", "127.0.0.3"
BODY_PROMPTS = {"prompts": [{"x": 10, "y": 15, "object_id": 1}],
                "box_prompts": [{"x_min": 38, "y_min": 25, "x_max": 62, "y_max": 46, "object_id": 2}],
                "return_masks_rle": True}
TIMINGS: dict[str, float] = {}


def _wait(condition, what: str, timeout_s: float, every_s: float = 0.2):
    deadline = time.time() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting until {what}")
        time.sleep(every_s)


@dataclass
class RayNode:
    """One `ray start --block` process and its descendants: a Ray node of its own on this machine."""

    name: str
    temp_dir: Path
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, ip: str, root: Path, env: dict, resources: dict, worker_ports: tuple[int, int],
              head_port: int | None = None, gcs_address: str | None = None) -> "RayNode":
        temp_dir = root / name
        temp_dir.mkdir(parents=True)
        args = [str(RAY), "start", "--block", "--node-ip-address", ip, "--num-cpus", str(NODE_CPUS),
                "--resources", json.dumps(resources), "--temp-dir", str(temp_dir),
                "--object-store-memory", str(256 * 2**20), "--disable-usage-stats",
                "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--min-worker-port", str(worker_ports[0]), "--max-worker-port", str(worker_ports[1]),
                "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
        if head_port is not None:
            args += ["--head", "--port", str(head_port), "--include-dashboard=false",
                     "--ray-client-server-port", str(free_port())]
        else:
            args += ["--address", gcs_address]
        log = root / f"{name}.log"
        with open(log, "wb") as out:
            # A session of its own: the raylet, GCS and agents are in its process group (workers,
            # and HAProxy under them, are not: see processes()), and no signal of ours reaches it.
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = cls(name, temp_dir, proc, log)
        try:
            _wait(node._started, f"Ray node {name} started (see {log})", 90)
        except BaseException:
            node.kill()
            raise
        return node

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"`ray start` for {self.name} exited with {self.proc.returncode}:\n"
                                 f"{self.log.read_text()[-3000:]}")
        return "Ray runtime started." in self.log.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this node: the descendants of its `ray start` (Ray's workers run in
        process groups of their own), its process group, and anything naming its temp dir."""
        found: dict[int, psutil.Process] = {}
        try:
            first = psutil.Process(self.proc.pid)
            found.update((p.pid, p) for p in [first, *first.children(recursive=True)])
        except psutil.Error:
            pass
        marker = str(self.temp_dir)
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getpgid(p.pid) == self.proc.pid or marker in " ".join(p.info["cmdline"] or ()):
                    found.setdefault(p.pid, p)
            except (psutil.Error, OSError):
                continue
        return [p for p in found.values() if p.pid != os.getpid() and _alive(p)]

    def kill(self) -> None:
        """SIGKILL to every process of the node at once, as when its machine dies."""
        doomed = self.processes()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in doomed:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(timeout=30)

        def gone():
            left = [p for p in {p.pid: p for p in [*doomed, *self.processes()]}.values() if _alive(p)]
            for p in left:  # anything started in the meantime
                try:
                    p.kill()
                except psutil.Error:
                    pass
            return not left

        _wait(gone, f"every process of {self.name} is gone", 20)

    def encode_calls(self) -> int:
        """`encode_range` calls served by encoder replicas on this node (their Serve access logs)."""
        return sum(path.read_text(errors="replace").count("encode_range OK")
                   for path in self.temp_dir.glob(f"session_*/logs/serve/replica_*{ENCODER}*.log"))


@dataclass
class MultiNode:
    url: str
    root: Path
    env: dict
    gcs_address: str
    head: RayNode
    node2: RayNode
    node2_generation: int = 1
    nodes_by_id: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Key {API_KEY}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def start_node2(self) -> RayNode:
        self.node2_generation += 1
        self.node2 = RayNode.start(f"node2-{self.node2_generation}", NODE2_IP, self.root, self.env,
                                   {"visus_node2": 10, "visus_encoder": 1}, (26000, 26999),
                                   gcs_address=self.gcs_address)
        return self.node2

    def refresh_nodes(self) -> None:
        import ray

        for node in ray.nodes():
            if not node["Alive"]:
                continue
            resources = node["Resources"]
            name = "head" if "visus_head" in resources else "node2" if "visus_node2" in resources else "?"
            self.nodes_by_id[node["NodeID"]] = name

    def placement(self) -> dict[str, list[str]]:
        """Deployment (or the queue actor) -> the nodes ('head', 'node2') its live replicas run on."""
        from ray._private.state import actors  # the GCS actor table; ray.util.state needs the dashboard

        self.refresh_nodes()
        out: dict[str, list[str]] = {}
        for actor in actors(actor_state_name="ALIVE").values():
            name = actor["Name"]
            if name.startswith("SERVE_REPLICA::"):
                key = name.split("#")[1]
            elif name == "visus-job-queue":
                key = "queue"
            else:
                continue
            out.setdefault(key, []).append(self.nodes_by_id.get(actor["Address"]["NodeID"], "?"))
        return {k: sorted(v) for k, v in out.items()}

    def encode_calls(self) -> dict[str, int]:
        return {"head": self.head.encode_calls(), "node2": self.node2.encode_calls()}

    def outward_connections(self) -> list:
        """Connections of the cluster's processes (and this driver) to anything but loopback."""
        pids = {p.pid for node in (self.head, self.node2) for p in node.processes()} | {os.getpid()}
        return [c for c in psutil.net_connections(kind="inet")
                if c.pid in pids and c.raddr and not _loopback(c.raddr.ip)]


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def _cluster_env(root: Path) -> dict:
    """serve/ray_env.py's settings, plus ports and paths of our own for what Ray Serve would otherwise
    take from fixed per-host defaults (HAProxy's files and ports, fallback proxy, direct ingress)."""
    from serve.ray_env import RAY_ENV_DEFAULTS

    haproxy = root / "haproxy"
    haproxy.mkdir()
    env = {**RAY_ENV_DEFAULTS, **{k: v for k, v in os.environ.items() if k in RAY_ENV_DEFAULTS}}
    env.update({
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "35000", "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "35500",
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "45000", "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "45500",
        # Access logs straight to the file (throughput mode buffers 1000 lines): the test counts them.
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
        # The gateway's direct ingress otherwise drains for 30 s at serve.shutdown.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    })
    return env


def _multinode_config(home: Path, port: int):
    from serve.config import load_config

    config = load_config(None, home=str(home), port=port, host="127.0.0.1", api_keys=[API_KEY],
                         gateway={"num_cpus": 0.5, "max_ongoing_requests": 1000, "num_replicas": 1,
                                  "resources": {"visus_head": 0.01}})
    video = next(e for e in config.endpoints if e.id == VIDEO)
    small = {"num_cpus": 0.5, "max_ongoing_requests": 2, "autoscaling_config": None}
    options = video.options.model_copy(update={**small, "num_replicas": 1, "resources": {"visus_node2": 1}})
    workers = [w.model_copy(update={"options": w.options.model_copy(
        update={**small, "num_replicas": 2, "resources": {"visus_encoder": 1}})}) for w in video.workers]
    video = video.model_copy(update={"model": {**video.model, "chunk_size": CHUNK, "prefetch": 2},
                                     "options": options, "workers": workers})
    return config.model_copy(update={"endpoints": [video]}).with_secrets()


@pytest.fixture(scope="module")
def cluster():
    import ray

    if ray.is_initialized():
        pytest.skip("this process already runs the session's Ray cluster: run the multinode tests in a pytest "
                    "call of their own (`pytest -m multinode`; `make test` does)")
    from ray import serve

    from models.tiny import write_tiny_sam2
    from serve.app_builder import build_app

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="vmn-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    saved_env = dict(os.environ)
    nodes: list[RayNode] = []
    mn: MultiNode | None = None
    try:
        home = root / "home"
        write_tiny_sam2(home / "models" / "sam2")
        port = free_port()
        config = _multinode_config(home, port)
        env = _cluster_env(root)
        os.environ.update(env)  # the driver (serve.start / serve.run below) runs with the same settings
        env = dict(os.environ)
        gcs_port = free_port()
        gcs_address = f"{HEAD_IP}:{gcs_port}"
        head = RayNode.start("head", HEAD_IP, root, env, {"visus_head": 1, "visus_encoder": 1}, (25000, 25999),
                             head_port=gcs_port)
        nodes.append(head)
        node2 = RayNode.start("node2-1", NODE2_IP, root, env, {"visus_node2": 10, "visus_encoder": 1}, (26000, 26999),
                              gcs_address=gcs_address)
        nodes.append(node2)
        mn = MultiNode(url=f"http://127.0.0.1:{port}", root=root, env=env, gcs_address=gcs_address,
                       head=head, node2=node2)
        TIMINGS["nodes_started_s"] = time.perf_counter() - started
        ray.init(address=gcs_address, namespace=config.queue.namespace, log_to_driver=False,
                 _node_ip_address=HEAD_IP)
        _wait(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, "both nodes are alive", 60)
        _queue_actor_on_node2(config)
        # HeadOnly: one HAProxy, on the head; replicas on node 2 are reached over Ray, not HTTP.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config, has_gpu=False), name=config.app_name, route_prefix="/", blocking=False)
        _wait(lambda: _ready(mn), "Visus answers /readyz", 180, 0.5)
        TIMINGS["cluster_ready_s"] = time.perf_counter() - started
        yield mn
    finally:
        teardown = time.perf_counter()
        # No serve.shutdown(): it waits for replicas that may be pending on a dead node; every process
        # of the cluster goes below.
        ray.shutdown()
        for node in reversed([*nodes, *([mn.node2] if mn and mn.node2 not in nodes else [])]):
            node.kill()
        _kill_leftovers(root)
        os.environ.clear()
        os.environ.update(saved_env)
        TIMINGS["teardown_s"] = time.perf_counter() - teardown
        print("multinode timings:", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
        shutil.rmtree(root, ignore_errors=True)


def _alive(p: psutil.Process) -> bool:
    """Running and not a zombie (killed processes stay zombies until their new parent, init, reaps them)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_leftovers(root: Path) -> None:
    """Whatever still names our temp dir (HAProxy reads its config from there), by pid."""
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and str(root) in " ".join(p.info["cmdline"] or ()):
                print(f"killing leftover {p.pid}: {p.info['cmdline'][:3]}")
                p.kill()
        except psutil.Error:
            continue


def _queue_actor_on_node2(config) -> None:
    """The job queue actor, created before the gateway looks it up, on node 2 while node 2 lives.

    The platform keeps it on the head (serve/jobs/client.py); here it is moved to node 2 so that the
    first kill takes it down with node 2 every time and it restarts on the head (the affinity is
    soft), where the second kill finds it.
    """
    import ray
    from ray._private.state import actors
    from ray.util import list_named_actors
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from serve.jobs.client import get_queue_actor

    node2 = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "visus_node2" in n["Resources"])
    deadline = time.time() + 60
    while True:
        actor = get_queue_actor(config, {"scheduling_strategy": NodeAffinitySchedulingStrategy(node2, soft=True)})
        ray.get(actor.ready.remote(), timeout=60)
        if actors(actor_id=actor._actor_id.hex())["Address"]["NodeID"] == node2:
            return
        # A soft affinity falls back to the head while the head's view of a new node is not yet synced.
        assert time.time() < deadline, "could not place the queue actor on node 2"
        ray.kill(actor, no_restart=True)
        _wait(lambda: config.queue.actor_name not in {a["name"] for a in list_named_actors(True)},
              "the misplaced queue actor is gone", 30)
        time.sleep(1)


def _ready(mn: MultiNode) -> bool:
    try:
        return httpx.get(f"{mn.url}/readyz", headers=mn.headers, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _video_body(num_frames: int) -> dict:
    return {"video_url": data_uri(lossless_video(moving_squares(num_frames, 64, 48)), "video/quicktime"),
            **BODY_PROMPTS}


def _queue_stats(http: httpx.Client) -> dict:
    """The queue's counters from /readyz (503 while a deployment is unhealthy, with the counters still
    there; without them while the queue actor does not answer)."""
    return http.get("/readyz").json().get("queue") or {}


def _ranges_done(status: dict) -> int:
    return sum(log["message"].startswith("range ") for log in status.get("logs") or [])


def _outcome(http: httpx.Client, submitted: dict, timeout_s: float) -> tuple[dict, httpx.Response]:
    def done():
        status = http.get(submitted["status_url"], params={"logs": 1})
        assert status.status_code == 200, status.text
        return status.json() if status.json()["status"] == "COMPLETED" else None

    status = _wait(done, "the job completed", timeout_s, 0.1)
    return status, http.get(submitted["response_url"])


def _check_result(http: httpx.Client, response: httpx.Response, num_frames: int) -> None:
    from models.video_io import probe_video

    assert response.status_code == 200, response.text
    out = response.json()
    video = http.get(out["video"]["url"])
    assert video.status_code == 200
    assert probe_video(video.content).num_frames == num_frames
    masks = http.get(out["masks_rle"]["url"]).json()
    assert [f["frame_index"] for f in masks["frames"]] == list(range(num_frames))


def test_video_job_is_encoded_on_both_nodes(cluster):
    placement = cluster.placement()
    print("placement:", placement)
    assert placement[PROPAGATOR] == ["node2"]
    assert placement[ENCODER] == ["head", "node2"]
    assert placement["gateway"] == ["head"]
    assert placement["queue"] == ["node2"]
    before = cluster.encode_calls()
    num_frames = 24
    with cluster.client() as http:
        started = time.perf_counter()
        submitted = http.post(f"/queue/{VIDEO}", json=_video_body(num_frames))
        assert submitted.status_code == 200, submitted.text
        status, response = _outcome(http, submitted.json(), 120)
        TIMINGS["job_24_frames_s"] = time.perf_counter() - started
        _check_result(http, response, num_frames)
    assert _ranges_done(status) == num_frames // CHUNK

    def encoded_on_both():
        calls = cluster.encode_calls()
        return calls if all(calls[n] > before[n] for n in calls) else None

    after = _wait(encoded_on_both, f"both nodes' encoders served encode_range calls (before: {before})", 10)
    print("encode_range calls by node:", {n: after[n] - before[n] for n in after})
    assert cluster.outward_connections() == []


def _kill_node2_mid_job(cluster: MultiNode, label: str) -> None:
    """Kill node 2 while a long video job propagates on it, watch the job while the node is down,
    start node 2 again: the job completes from its checkpoint (or ends with a clear error)."""
    num_frames = 160
    with cluster.client() as http:
        started = time.perf_counter()
        submitted = http.post(f"/queue/{VIDEO}", json=_video_body(num_frames)).json()

        def some_ranges_done():
            status = http.get(submitted["status_url"], params={"logs": 1}).json()
            assert status["status"] != "COMPLETED", "finished before the kill: make the video longer"
            return _ranges_done(status) >= 3

        _wait(some_ranges_done, "3 ranges were propagated", 120, 0.05)
        baseline = _queue_stats(http).get("redispatched")
        killed = time.perf_counter()
        cluster.node2.kill()
        TIMINGS[f"{label}_kill_s"] = time.perf_counter() - killed

        # Node 2 is gone and with it the only place the propagator may run: the job must stay known,
        # its status answering, until the queue has dispatched it again (or ended it with an error).
        timeline: list[tuple] = []
        slowest = [0.0]

        def redispatched() -> bool:
            asked = time.perf_counter()
            response = http.get(submitted["status_url"], params={"logs": 1})
            slowest[0] = max(slowest[0], time.perf_counter() - asked)
            assert response.status_code == 200, response.text
            status = response.json()
            assert status["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"), status
            stats = _queue_stats(http)
            messages = [log["message"] for log in status.get("logs") or []]
            entry = (status["status"], messages[-1] if messages else None, stats.get("redispatched"))
            if not timeline or timeline[-1][1:] != entry:
                timeline.append((round(time.perf_counter() - killed, 1), *entry))
            return (status["status"] == "COMPLETED" or any("dispatching it again" in m for m in messages)
                    or stats.get("redispatched") not in (None, baseline))

        try:
            _wait(redispatched, "the queue dispatched the job again", 90, 0.25)
        finally:
            print(f"{label}: while node 2 was down (s after the kill, status, last log, queue redispatches):")
            for entry in timeline:
                print("  ", entry)
        TIMINGS[f"{label}_redispatched_after_kill_s"] = time.perf_counter() - killed
        TIMINGS[f"{label}_slowest_status_while_down_s"] = slowest[0]

        restarted = time.perf_counter()
        cluster.start_node2()
        TIMINGS[f"{label}_node2_restart_s"] = time.perf_counter() - restarted
        status, response = _outcome(http, submitted, 150)
        TIMINGS[f"{label}_job_completed_after_kill_s"] = time.perf_counter() - killed
        TIMINGS[f"{label}_job_total_s"] = time.perf_counter() - started
        messages = [log["message"] for log in status["logs"]]
        print(f"{label}: job logs but ranges:", [m for m in messages if not m.startswith("range ")])
        assert response.content, "the result endpoint returned no body"
        if response.status_code == 200:
            _check_result(http, response, num_frames)
            resumed = [m for m in messages if m.startswith("resuming from the checkpoint after range")]
            assert resumed, messages
            assert int(resumed[0].split("range ")[1].split("/")[0]) >= 3  # not from frame 0
        else:  # a clear error, never a lost job
            body = response.json()
            assert body.get("detail"), body

        # Node 2 is back: both encoders and the propagator serve a new job.
        def encoders_on_both():
            placement = cluster.placement()
            return placement if placement.get(ENCODER) == ["head", "node2"] else None

        placement = _wait(encoders_on_both, "the encoder replicas are on both nodes again", 60)
        assert placement[PROPAGATOR] == ["node2"]
        before = cluster.encode_calls()
        again = http.post(f"/queue/{VIDEO}", json=_video_body(24)).json()
        _, response = _outcome(http, again, 120)
        _check_result(http, response, 24)
        assert cluster.encode_calls()["node2"] > before["node2"]


def test_node2_dies_mid_job_with_the_queue_actor(cluster):
    """The queue actor dies with node 2 (the fixture put it there): Ray restarts it on the head, it
    reloads the job from its journal and dispatches it again."""
    assert cluster.placement()["queue"] == ["node2"]
    _kill_node2_mid_job(cluster, "queue_on_node2")
    assert cluster.placement()["queue"] == ["head"]


def test_node2_dies_mid_job_under_the_queue_actor(cluster):
    """The queue actor (on the head now) sees the propagator replica lost and dispatches the job again."""
    assert cluster.placement()["queue"] == ["head"]
    _kill_node2_mid_job(cluster, "queue_on_head")
