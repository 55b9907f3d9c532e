"""KubeRay `RayService` manifests rendered from the Visus config (`visus config render --kuberay`).

The manifest is built from the same config as `visus up` and `visus config render`, so the three
never drift apart:

- `serveConfigV2` is exactly `render_serve_config` of the *cluster config*: the project config with
  the HTTP proxies on 0.0.0.0, the overlay's checkpoints, and every deployment pinned to its worker
  group by a Ray custom resource (`visus_group_<group>`), which the group's `rayStartParams` offers.
- Worker groups come from the enabled endpoints: one CPU group (`cpu`) for the gateway and the HTTP
  proxies, and one GPU group per model family (the second segment of a fal id: `sam2`, `evf-sam`,
  `sa2va`, `svd`; a Segmind slug otherwise). An endpoint that another endpoint calls as a worker runs
  in its caller's group (EVF-SAM's Grounding DINO). A new endpoint gets a group without any edit here.
  Group sizes follow the deployments' replica counts and resource requests.
- An overlay (`OVERLAYS`) says what differs between clusters: `cpu-tiny` runs anywhere (no GPUs,
  tiny checkpoints written by an init container, every deployment in the CPU group); `gpu` runs the
  real checkpoints from the `visus-models` volume on GPU worker groups that scale from zero.

Secrets and per-cluster settings (bucket, Redis journal URL) are not in the manifest: the pods read
them from the `visus-env` ConfigMap and the `visus-secrets` / `visus-s3` Secrets that
`serve/k8s_tree.py` lays out next to it as a kustomize base + overlays under `k8s/`.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from serve.config import DEFAULT_CONFIG_PATH, DeploymentOptions, EndpointConfig, VisusConfig


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "latest"


NAME = "visus"  # the RayService; KubeRay names its Services visus-head-svc and visus-serve-svc
IMAGE = f"visus:{_version('visus')}"  # built from Dockerfile; retag with kustomize `images:`
RAY_VERSION = _version("ray")  # pinned in pyproject.toml: the image's Ray
CPU_GROUP = "cpu"
GROUP_RESOURCE_PREFIX = "visus_group_"
GROUP_RESOURCE_CAPACITY = 1000  # per pod: only pins, never limits (each replica takes 1)
CONFIG_MAP = "visus-env"
SECRET = "visus-secrets"  # api-keys, secret-key, redis-password
S3_SECRET = "visus-s3"  # AWS_* / FSSPEC_S3_* environment for s3fs
REDIS_SERVICE = "visus-redis"
MODELS_PVC = "visus-models"
MODELS_MOUNT = "/models"
SERVE_PORT = 8000
DASHBOARD_AGENT_PORT = 52365
# Host RAM (GiB) a GPU pod of a model family needs to load its weights; unknown families get the default.
GPU_POD_MEMORY_GI = {"sam2": 16, "evf-sam": 24, "svd": 48, "sa2va": 64}
DEFAULT_GPU_POD_MEMORY_GI = 32


@dataclass(frozen=True)
class PodSize:
    cpu: int
    memory_gi: int

    def resources(self, gpus: int = 0) -> dict:
        amounts = {"cpu": str(self.cpu), "memory": f"{self.memory_gi}Gi"}
        if gpus:
            amounts["nvidia.com/gpu"] = str(gpus)
        return {"requests": dict(amounts), "limits": dict(amounts)}


@dataclass(frozen=True)
class Overlay:
    """What differs between clusters; everything else comes from the Visus config."""

    name: str
    gpu: bool
    head: PodSize
    cpu_pod: PodSize  # the CPU group's pods (gateway + proxies; without GPUs, every model too)
    idle_timeout_s: int  # the Ray autoscaler removes a worker pod idle this long
    tiny_models: bool  # True: an init container writes tiny checkpoints; False: the models PVC
    checkpoint_renames: Mapping[str, str] = field(default_factory=dict)  # substrings of model settings
    model_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # endpoint id -> settings


OVERLAYS: dict[str, Overlay] = {
    "cpu-tiny": Overlay("cpu-tiny", gpu=False, head=PodSize(1, 4), cpu_pod=PodSize(4, 8), idle_timeout_s=60,
                        tiny_models=True),
    # `visus models download NAME` lays these out under the models volume (see docs/kubernetes.md).
    "gpu": Overlay("gpu", gpu=True, head=PodSize(2, 8), cpu_pod=PodSize(2, 4), idle_timeout_s=600,
                   tiny_models=False,
                   checkpoint_renames={"sam2/sam2.1_hiera_micro.pt": "sam2/sam2.1_hiera_large.pt",
                                       "svd/svd-tiny": "svd/stable-video-diffusion-img2vid-xt",
                                       "svd/svd-controlnet-tiny": "svd/temporal-controlnet-depth-svd-v1",
                                       "sa2va/sa2va-tiny-internlm2": "sa2va/Sa2VA-8B",
                                       "sa2va/sa2va-tiny-qwen2": "sa2va/Sa2VA-4B"},
                   model_overrides={"fal-ai/svd": {"height": 576, "width": 1024},
                                    "fal-ai/sa2va/8b/image": {"max_new_tokens": 2048},
                                    "fal-ai/sa2va/8b/video": {"max_new_tokens": 2048},
                                    "fal-ai/sa2va/4b/image": {"max_new_tokens": 2048},
                                    "fal-ai/sa2va/4b/video": {"max_new_tokens": 2048}}),
}


@dataclass
class WorkerGroup:
    name: str
    gpu: bool
    deployments: list[tuple[str, DeploymentOptions]]

    @property
    def resource(self) -> str:
        return GROUP_RESOURCE_PREFIX + self.name.replace("-", "_")


class FileConfig(VisusConfig):
    """A Visus config made from its data alone: VISUS_* variables in the environment of whoever renders
    the manifests are ignored (the pods get theirs from the ConfigMap and Secrets instead)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)


def load_file_config(path=None) -> VisusConfig:
    """The config file alone, without environment overrides."""
    data = yaml.safe_load(Path(path or DEFAULT_CONFIG_PATH).read_text()) or {}
    return FileConfig.model_validate(data)


def endpoint_family(endpoint: EndpointConfig) -> str:
    """`fal-ai/sam2/image` -> sam2, `fal-ai/evf-sam` -> evf-sam; a Segmind slug is its own family."""
    base = endpoint.id.split("/")[1] if endpoint.protocol == "fal" else endpoint.id
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "model"


def _max_replicas(options: DeploymentOptions) -> int:
    return options.autoscaling_config.max_replicas if options.autoscaling_config else options.num_replicas or 1


def model_families(config: VisusConfig) -> dict[str, str]:
    """Deployment name -> model family, for every enabled endpoint's deployment and its own workers."""
    endpoints = config.enabled_endpoints()
    family = {e.deployment_name: endpoint_family(e) for e in endpoints}
    for _ in endpoints:  # an endpoint called as a worker joins its caller's family (chains settle)
        for e in endpoints:
            for w in e.workers:
                if w.deployment is None and w.name in family:
                    family[w.name] = family[e.deployment_name]
    for e in endpoints:
        family.update({w.name: family[e.deployment_name] for w in e.workers if w.deployment})
    return family


def worker_groups(config: VisusConfig, overlay: Overlay) -> list[WorkerGroup]:
    """The CPU group first (gateway), then one group per model family in config order."""
    from serve.gateway.ingress import GATEWAY_NAME

    cpu = WorkerGroup(CPU_GROUP, gpu=False, deployments=[(GATEWAY_NAME, config.gateway)])
    groups: dict[str, WorkerGroup] = {}
    families = model_families(config)
    for name, options in config.model_deployments():
        if not overlay.gpu:
            cpu.deployments.append((name, options))
            continue
        family = families[name]
        if family == CPU_GROUP:
            family += "-model"
        groups.setdefault(family, WorkerGroup(family, gpu=False, deployments=[])).deployments.append((name, options))
    for group in groups.values():
        group.gpu = any(options.num_gpus > 0 for _, options in group.deployments)
    return [cpu, *groups.values()]


def _rename(value: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for old, new in renames.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _rename(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v, renames) for v in value]
    return value


def cluster_config(config: VisusConfig, overlay: Overlay) -> VisusConfig:
    """The config the cluster runs: proxies on 0.0.0.0, the overlay's checkpoints, deployments pinned
    to their worker groups. `serveConfigV2` is `render_serve_config` of it."""
    pins = {name: group.resource for group in worker_groups(config, overlay) for name, _ in group.deployments}
    data = config.model_dump(mode="json")
    data["host"] = "0.0.0.0"

    def pin(options: dict, name: str) -> None:
        options["resources"] = {**options.get("resources", {}), pins[name]: 1.0}

    from serve.gateway.ingress import GATEWAY_NAME

    pin(data["gateway"], GATEWAY_NAME)
    for endpoint, raw in zip(config.endpoints, data["endpoints"]):
        if not endpoint.enabled:
            continue
        pin(raw["options"], endpoint.deployment_name)
        raw["model"] = {**_rename(raw["model"], overlay.checkpoint_renames),
                        **overlay.model_overrides.get(endpoint.id, {})}
        for worker in raw["workers"]:
            if worker["deployment"]:
                pin(worker["options"], worker["name"])
                worker["model"] = _rename(worker["model"], overlay.checkpoint_renames)
    return FileConfig.model_validate(data)


def serve_config_text(config: VisusConfig, overlay: Overlay) -> str:
    """serveConfigV2: the YAML of `render_serve_config` of the cluster config."""
    from serve.cli import render_serve_config

    return yaml.safe_dump(render_serve_config(cluster_config(config, overlay), has_gpu=overlay.gpu), sort_keys=False)


# --- pods ------------------------------------------------------------------------------------------

def _secret_env(name: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}


def _visus_env() -> tuple[list, list]:
    """(env, envFrom) of every Ray container: settings from the ConfigMap, secrets from the Secrets."""
    env = [_secret_env("VISUS_API_KEYS", "api-keys"), _secret_env("VISUS_SECRET_KEY", "secret-key"),
           _secret_env("VISUS_REDIS_PASSWORD", "redis-password")]
    env_from = [{"configMapRef": {"name": CONFIG_MAP}}, {"secretRef": {"name": S3_SECRET}}]
    return env, env_from


def _http_probe(failure_threshold: int) -> dict:
    # Ray >= 2.53: one endpoint on the dashboard agent checks the raylet (and the GCS on the head).
    return {"httpGet": {"path": "/api/healthz", "port": DASHBOARD_AGENT_PORT},
            "initialDelaySeconds": 10, "periodSeconds": 5, "timeoutSeconds": 5,
            "successThreshold": 1, "failureThreshold": failure_threshold}


def _worker_readiness() -> dict:
    # As KubeRay's own for RayService workers: the raylet and this pod's Serve proxy (HAProxy or the
    # classic proxy both answer /-/healthz), so only pods that can route requests are in visus-serve-svc.
    check = "wget -T 2 -q -O- http://localhost:{port}/{path} | grep success"
    command = " && ".join([check.format(port=DASHBOARD_AGENT_PORT, path="api/local_raylet_healthz"),
                           check.format(port=SERVE_PORT, path="-/healthz")])
    return {"exec": {"command": ["bash", "-c", command]},
            "initialDelaySeconds": 10, "periodSeconds": 5, "timeoutSeconds": 5,
            "successThreshold": 1, "failureThreshold": 1}


def _container(name: str, size: PodSize, gpus: int, ports: list, head: bool, mounts: list) -> dict:
    env, env_from = _visus_env()
    container = {
        "name": name,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "envFrom": env_from,
        "ports": ports,
        "resources": size.resources(gpus),
        # Liveness: restart a pod whose raylet died (generous: a busy GCS can be slow to answer).
        "livenessProbe": _http_probe(failure_threshold=120),
        "readinessProbe": _http_probe(failure_threshold=10) if head else _worker_readiness(),
    }
    if not head:
        container["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _tiny_models_init() -> dict:
    return {
        "name": "tiny-models",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["visus", "models", "tiny", "--output", MODELS_MOUNT],
        "resources": PodSize(1, 2).resources(),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}],
    }


def _group_size(group: WorkerGroup, overlay: Overlay) -> tuple[PodSize, int, int]:
    """(pod size, GPUs per pod, max pods) to host every deployment of the group at its max replicas."""
    cpus = sum(_max_replicas(o) * o.num_cpus for _, o in group.deployments)
    if not group.gpu:
        return overlay.cpu_pod, 0, max(1, math.ceil(cpus / overlay.cpu_pod.cpu))
    gpus_per_pod = max(1, math.ceil(max(o.num_gpus for _, o in group.deployments)))
    gpus = sum(_max_replicas(o) * o.num_gpus for _, o in group.deployments)
    pods = max(1, math.ceil(gpus / gpus_per_pod - 1e-9))
    widest = max(o.num_cpus for _, o in group.deployments)
    pod_cpus = math.ceil(max(cpus / pods, widest)) + 1  # +1: raylet, proxy, object store
    memory = max(GPU_POD_MEMORY_GI.get(group.name, DEFAULT_GPU_POD_MEMORY_GI), 4 * pod_cpus)
    return PodSize(pod_cpus, memory), gpus_per_pod, pods


def _worker_group(group: WorkerGroup, overlay: Overlay) -> dict:
    size, gpus, max_pods = _group_size(group, overlay)
    min_pods = 1 if group.name == CPU_GROUP else 0  # the gateway always runs; models scale from zero
    mounts, volumes, spec = [], [], {}
    from serve.gateway.ingress import GATEWAY_NAME

    models = [name for name, _ in group.deployments if name != GATEWAY_NAME]
    if models:
        if overlay.tiny_models:
            volumes.append({"name": "models", "emptyDir": {}})
            spec["initContainers"] = [_tiny_models_init()]
            mounts.append({"name": "models", "mountPath": MODELS_MOUNT})
        else:
            volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": MODELS_PVC, "readOnly": True}})
            mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
    container = _container("ray-worker", size, gpus, [{"containerPort": SERVE_PORT, "name": "serve"}],
                           head=False, mounts=mounts)
    spec["containers"] = [container]
    # Long video jobs drain before the pod goes (the Serve graceful shutdown, plus `ray stop`).
    drain = max(o.graceful_shutdown_timeout_s for _, o in group.deployments)
    spec["terminationGracePeriodSeconds"] = int(math.ceil(drain)) + 30
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if volumes:
        spec["volumes"] = volumes
    resources = json.dumps({group.resource: GROUP_RESOURCE_CAPACITY})
    return {
        "groupName": group.name,
        "replicas": min_pods,
        "minReplicas": min_pods,
        "maxReplicas": max(max_pods, min_pods),
        # A JSON object in quotes, as `ray start --resources` and the KubeRay autoscaler read it.
        "rayStartParams": {"resources": '"' + resources.replace('"', '\\"') + '"'},
        "template": {"metadata": {"labels": {"app.kubernetes.io/name": NAME, "visus.dev/group": group.name}},
                     "spec": spec},
    }


def _head_group(overlay: Overlay) -> dict:
    ports = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
             {"containerPort": 10001, "name": "client"}, {"containerPort": SERVE_PORT, "name": "serve"}]
    return {
        # No replicas on the head: it keeps the GCS, the Serve controller and the dashboard responsive.
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {"metadata": {"labels": {"app.kubernetes.io/name": NAME, "visus.dev/group": "head"}},
                     "spec": {"containers": [_container("ray-head", overlay.head, 0, ports, head=True, mounts=[])]}},
    }


def render_rayservice(config: VisusConfig, overlay: Overlay | str) -> dict:
    """The RayService (ray.io/v1) of `config` on a cluster shaped by `overlay`."""
    overlay = OVERLAYS[overlay] if isinstance(overlay, str) else overlay
    autoscaler_size = {"cpu": "500m", "memory": "512Mi"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": NAME, "visus.dev/overlay": overlay.name}},
        "spec": {
            # A serveConfigV2-only change is applied in place; a rayClusterConfig change (image, env,
            # groups, a regenerated Secret or ConfigMap) brings up a new cluster, then switches traffic.
            "upgradeStrategy": {"type": "NewCluster"},
            "rayClusterDeletionDelaySeconds": 120,
            "excludeHeadPodFromServeSvc": True,
            "serveConfigV2": serve_config_text(config, overlay),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "upscalingMode": "Default",
                    "idleTimeoutSeconds": overlay.idle_timeout_s,
                    "imagePullPolicy": "IfNotPresent",
                    "resources": {"requests": dict(autoscaler_size), "limits": dict(autoscaler_size)},
                },
                "authOptions": {"mode": "token"},
                "gcsFaultToleranceOptions": {
                    "redisAddress": f"{REDIS_SERVICE}:6379",
                    "redisPassword": {"valueFrom": {"secretKeyRef": {"name": SECRET, "key": "redis-password"}}},
                },
                "headGroupSpec": _head_group(overlay),
                "workerGroupSpecs": [_worker_group(g, overlay) for g in worker_groups(config, overlay)],
            },
        },
    }


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as `|` blocks and no YAML anchors, so manifests stay readable."""

    def ignore_aliases(self, data) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_LiteralDumper.add_representer(str, _str)


def dump_yaml(doc: Any, header: str = "") -> str:
    return header + yaml.dump(doc, Dumper=_LiteralDumper, sort_keys=False, width=120)
