"""The `k8s/` kustomize layout, rendered from the Visus config (`make k8s`; a test fails on drift).

    k8s/base/               the RayService of the `cpu-tiny` overlay (runs anywhere), Redis (GCS fault
                            tolerance + the job journal), the `visus-env` ConfigMap and placeholder
                            Secrets (`visus-secrets`, `visus-s3`)
    k8s/overlays/cpu-tiny/  base + a throwaway MinIO for the results bucket: a whole cluster without GPUs
    k8s/overlays/gpu/       base with the `gpu` RayService (real checkpoints from the `visus-models`
                            volume, GPU worker groups that scale from zero) + that volume's claim

Generated Secrets and ConfigMaps get a content hash in their names and kustomize rewrites the
references inside the RayService too (`kustomizeconfig.yaml`), so changing a secret or a setting
changes `rayClusterConfig` and KubeRay rolls out a new cluster with it.
"""

from __future__ import annotations

from pathlib import Path

from serve import kuberay
from serve.config import VisusConfig
from serve.ray_env import RAY_ENV_DEFAULTS

STORAGE_URL = "s3://visus/files"
JOURNAL_URL = f"redis://{kuberay.REDIS_SERVICE}:6379/1"  # GCS fault tolerance keeps Redis db 0
REDIS_IMAGE = "redis:7.4-alpine"
MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2024-12-18T13-15-44Z"
MC_IMAGE = "quay.io/minio/mc:RELEASE.2024-11-21T17-21-54Z"
MINIO_SERVICE = "visus-minio"
LABELS = {"app.kubernetes.io/part-of": "visus"}


def _header(source: str) -> str:
    return (f"# Generated from {source} by `make k8s` (visus config render --kuberay --k8s-dir k8s).\n"
            "# Do not edit: change the config, serve/kuberay.py or serve/k8s_tree.py and re-render.\n")


def _size(cpu: str, memory: str) -> dict:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}


def _secret_ref(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _app(name: str, containers: list, volumes: list) -> dict:
    labels = {"app.kubernetes.io/name": name, **LABELS}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": containers, "volumes": volumes}}},
    }


def _service(name: str, port: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": LABELS},
            "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"name": "tcp", "port": port}]}}


def _claim(name: str, size: str, mode: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "labels": LABELS},
            "spec": {"accessModes": [mode], "resources": {"requests": {"storage": size}}}}


def redis_manifests() -> list[dict]:
    """One Redis for the GCS (fault tolerance) and the job journal: append-only file on a volume."""
    ping = 'redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping | grep -q PONG'
    container = {
        "name": "redis", "image": REDIS_IMAGE,
        "args": ["--requirepass", "$(REDIS_PASSWORD)", "--appendonly", "yes", "--appendfsync", "everysec",
                 "--dir", "/data"],
        "env": [_secret_ref("REDIS_PASSWORD", kuberay.SECRET, "redis-password")],
        "ports": [{"containerPort": 6379, "name": "redis"}],
        "resources": _size("1", "2Gi"),
        "readinessProbe": {"exec": {"command": ["sh", "-c", ping]}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": 6379}, "initialDelaySeconds": 10, "periodSeconds": 10},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return [_claim("visus-redis-data", "8Gi", "ReadWriteOnce"),
            _app(kuberay.REDIS_SERVICE, [container], [{"name": "data", "persistentVolumeClaim": {
                "claimName": "visus-redis-data"}}]),
            _service(kuberay.REDIS_SERVICE, 6379)]


def minio_manifests() -> list[dict]:
    """A throwaway S3 (data on an emptyDir) and a Job that makes the bucket of STORAGE_URL."""
    bucket = STORAGE_URL.removeprefix("s3://").split("/", 1)[0]
    health = lambda path: {"httpGet": {"path": path, "port": 9000}, "periodSeconds": 5}  # noqa: E731
    server = {
        "name": "minio", "image": MINIO_IMAGE, "args": ["server", "/data"],
        "env": [_secret_ref("MINIO_ROOT_USER", kuberay.S3_SECRET, "AWS_ACCESS_KEY_ID"),
                _secret_ref("MINIO_ROOT_PASSWORD", kuberay.S3_SECRET, "AWS_SECRET_ACCESS_KEY")],
        "ports": [{"containerPort": 9000, "name": "s3"}],
        "resources": _size("500m", "1Gi"),
        "readinessProbe": health("/minio/health/ready"), "livenessProbe": health("/minio/health/live"),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    make_bucket = (f'until mc alias set local http://{MINIO_SERVICE}:9000 "$AWS_ACCESS_KEY_ID" '
                   f'"$AWS_SECRET_ACCESS_KEY"; do sleep 2; done; mc mb --ignore-existing local/{bucket}')
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "visus-minio-bucket", "labels": LABELS},
        "spec": {"backoffLimit": 10, "ttlSecondsAfterFinished": 600, "template": {"spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "mc", "image": MC_IMAGE, "command": ["/bin/sh", "-c", make_bucket],
                            "env": [{"name": "MC_CONFIG_DIR", "value": "/tmp/.mc"}],
                            "envFrom": [{"secretRef": {"name": kuberay.S3_SECRET}}],
                            "resources": _size("100m", "128Mi")}]}}},
    }
    return [_app(MINIO_SERVICE, [server], [{"name": "data", "emptyDir": {}}]), _service(MINIO_SERVICE, 9000), job]


def kustomize_config() -> dict:
    """Teaches kustomize where the RayService names Secrets and ConfigMaps (hash suffixes follow)."""
    pod = "spec/rayClusterConfig/{group}/template/spec/{containers}/{field}"
    specs = {"Secret": ["env/valueFrom/secretKeyRef/name", "envFrom/secretRef/name"],
             "ConfigMap": ["env/valueFrom/configMapKeyRef/name", "envFrom/configMapRef/name"]}
    refs = []
    for kind, fields in specs.items():
        paths = [pod.format(group=g, containers=c, field=f) for g in ("headGroupSpec", "workerGroupSpecs")
                 for c in ("containers", "initContainers") for f in fields]
        if kind == "Secret":
            paths.append("spec/rayClusterConfig/gcsFaultToleranceOptions/redisPassword/valueFrom/secretKeyRef/name")
        refs.append({"kind": kind, "fieldSpecs": [{"kind": "RayService", "path": p} for p in paths]})
    return {"nameReference": refs}


def _kustomization(**fields) -> dict:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields}


def base_kustomization() -> dict:
    env = {"VISUS_HOME": "/home/ray/.visus", "VISUS_MODEL_DIR": kuberay.MODELS_MOUNT, "VISUS_GPU": "0",
           "VISUS_STORAGE_URL": STORAGE_URL, "VISUS_JOURNAL_URL": JOURNAL_URL,
           # Local clusters turn Ray's token auth off; on KubeRay `authOptions` sets it up instead.
           **{k: v for k, v in RAY_ENV_DEFAULTS.items() if k != "RAY_AUTH_MODE"}}
    return _kustomization(
        resources=["rayservice.yaml", "redis.yaml"],
        configurations=["kustomizeconfig.yaml"],
        configMapGenerator=[{"name": kuberay.CONFIG_MAP, "literals": [f"{k}={v}" for k, v in env.items()]}],
        # Placeholders only: replace them from an overlay of your own (docs/kubernetes.md, "Secrets").
        secretGenerator=[
            {"name": kuberay.SECRET, "literals": ["api-keys=REPLACE-ME-api-key", "secret-key=REPLACE-ME-secret-key",
                                                  "redis-password=REPLACE-ME-redis-password"]},
            {"name": kuberay.S3_SECRET, "literals": ["AWS_ACCESS_KEY_ID=REPLACE-ME-access-key",
                                                     "AWS_SECRET_ACCESS_KEY=REPLACE-ME-secret-access-key",
                                                     "AWS_DEFAULT_REGION=us-east-1"]},
        ],
    )


def gpu_patch(config: VisusConfig) -> list[dict]:
    """JSON 6902 ops that turn the base RayService into the `gpu` overlay's."""
    rayservice = kuberay.render_rayservice(config, "gpu")
    return [{"op": "replace", "path": "/metadata/labels", "value": rayservice["metadata"]["labels"]},
            {"op": "replace", "path": "/spec", "value": rayservice["spec"]}]


def render_tree(config: VisusConfig, source: str = "serve/default_config.yaml") -> dict[str, str]:
    """Relative path under k8s/ -> file text."""
    header = _header(source)
    docs = lambda items: "---\n".join(kuberay.dump_yaml(d) for d in items)  # noqa: E731
    endpoint = f"http://{MINIO_SERVICE}:9000"
    rayservice_target = {"group": "ray.io", "version": "v1", "kind": "RayService", "name": kuberay.NAME}
    return {
        "base/kustomization.yaml": kuberay.dump_yaml(base_kustomization(), header),
        "base/kustomizeconfig.yaml": kuberay.dump_yaml(kustomize_config(), header),
        "base/rayservice.yaml": kuberay.dump_yaml(kuberay.render_rayservice(config, "cpu-tiny"), header),
        "base/redis.yaml": header + docs(redis_manifests()),
        "overlays/cpu-tiny/kustomization.yaml": kuberay.dump_yaml(_kustomization(
            resources=["../../base", "minio.yaml"],
            secretGenerator=[{"name": kuberay.S3_SECRET, "behavior": "merge",
                              "literals": [f"AWS_ENDPOINT_URL={endpoint}", f"FSSPEC_S3_ENDPOINT_URL={endpoint}"]}],
        ), header),
        "overlays/cpu-tiny/minio.yaml": header + docs(minio_manifests()),
        "overlays/gpu/kustomization.yaml": kuberay.dump_yaml(_kustomization(
            resources=["../../base", "models-pvc.yaml"],
            patches=[{"path": "rayservice-gpu.yaml", "target": rayservice_target}],
            configMapGenerator=[{"name": kuberay.CONFIG_MAP, "behavior": "merge", "literals": ["VISUS_GPU=1"]}],
        ), header),
        "overlays/gpu/rayservice-gpu.yaml": kuberay.dump_yaml(gpu_patch(config), header),
        # Read-only on the GPU pods; fill it once with `visus models download` (docs/kubernetes.md).
        "overlays/gpu/models-pvc.yaml": kuberay.dump_yaml(_claim(kuberay.MODELS_PVC, "200Gi", "ReadWriteMany"), header),
    }


def write_tree(root: Path, files: dict[str, str]) -> list[Path]:
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written
