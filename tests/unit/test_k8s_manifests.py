"""The committed k8s/ manifests: a fresh render, valid offline against KubeRay's CRD and Serve's schemas.

Each overlay is built with `kubectl kustomize` (offline) when kubectl is installed, else assembled
here from its files (resources + JSON 6902 patches; generated Secrets/ConfigMaps left out). Every
RayService validates against the strict RayService v1 schema, and its serveConfigV2 is exactly the
rendered Serve config of the cluster config, valid against the strict Serve schema.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from serve import k8s_tree, kuberay
from serve.cli import render_serve_config
from tests.manifest_schemas import manifest_errors

ROOT = Path(__file__).parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ["cpu-tiny", "gpu"]
KUBECTL = shutil.which("kubectl")


def _assemble(folder: Path) -> list[dict]:
    """A minimal kustomize without kubectl: resources and `replace` patches only."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        docs += _assemble(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        for doc in docs:
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                for op in yaml.safe_load((folder / patch["path"]).read_text()):
                    assert op["op"] == "replace", op
                    *parents, leaf = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
                    node = doc
                    for key in parents:
                        node = node[key]
                    node[leaf] = op["value"]
    return docs


def build(overlay: str) -> list[dict]:
    folder = K8S / "overlays" / overlay
    if KUBECTL is None:
        return _assemble(folder)
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def config():
    return kuberay.load_file_config()


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request):
    return request.param, build(request.param)


def _rayservice(docs: list[dict]) -> dict:
    (rayservice,) = [d for d in docs if d["kind"] == "RayService"]
    return rayservice


def _containers(doc: dict) -> list[dict]:
    """Every container spec in a document (pod templates, Ray groups, the autoscaler)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    if doc["kind"] == "RayService":  # KubeRay adds this container to the head from autoscalerOptions
        found.append({"name": "autoscaler", **doc["spec"]["rayClusterConfig"]["autoscalerOptions"]})
    return found


def test_committed_files_are_a_fresh_render(config):
    fresh = k8s_tree.render_tree(config)
    committed = {str(p.relative_to(K8S)): p.read_text() for p in K8S.rglob("*") if p.is_file()}
    stale = sorted(set(fresh) ^ set(committed) | {p for p in fresh if committed.get(p) != fresh[p]})
    assert not stale, f"k8s/ differs from a fresh render in {stale}: run `make k8s`"


def test_manifests_validate_against_the_kuberay_and_serve_schemas(built):
    overlay, docs = built
    errors = [e for doc in docs for e in manifest_errors(doc)]
    assert errors == [], f"{overlay}: {errors}"


def test_serve_config_is_the_rendered_serve_config(built, config):
    overlay, docs = built
    text = _rayservice(docs)["spec"]["serveConfigV2"]
    cluster = kuberay.cluster_config(config, kuberay.OVERLAYS[overlay])
    expected = render_serve_config(cluster, has_gpu=kuberay.OVERLAYS[overlay].gpu)
    assert yaml.safe_load(text) == expected
    assert text == yaml.safe_dump(expected, sort_keys=False)


def test_every_container_has_requests_and_limits(built):
    overlay, docs = built
    for doc in docs:
        for container in _containers(doc):
            resources = container.get("resources", {})
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(side, {})), (overlay, doc["kind"], container["name"])


def test_deployments_are_pinned_to_groups_that_offer_their_resource(built):
    overlay, docs = built
    spec = _rayservice(docs)["spec"]
    offered = {}
    for group in spec["rayClusterConfig"]["workerGroupSpecs"]:
        raw = group["rayStartParams"]["resources"]
        assert raw.startswith('"') and raw.endswith('"')  # the quoting `ray start --resources` expects
        offered.update(yaml.safe_load(raw[1:-1].replace("\\", "")))
    deployments = yaml.safe_load(spec["serveConfigV2"])["applications"][0]["deployments"]
    for deployment in deployments:
        (pin,) = deployment["ray_actor_options"]["resources"]
        assert pin in offered, (overlay, deployment["name"], pin)
    assert spec["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_gpu_groups_scale_from_zero_and_cpu_tiny_has_no_gpus(built):
    overlay, docs = built
    spec = _rayservice(docs)["spec"]
    groups = {g["groupName"]: g for g in spec["rayClusterConfig"]["workerGroupSpecs"]}
    gpu_groups = {name for name, g in groups.items()
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]}
    deployments = yaml.safe_load(spec["serveConfigV2"])["applications"][0]["deployments"]
    wants_gpu = [d["name"] for d in deployments if d["ray_actor_options"].get("num_gpus")]
    if overlay == "cpu-tiny":
        assert not gpu_groups and not wants_gpu
        return
    config = kuberay.load_file_config()
    assert gpu_groups == {g.name for g in kuberay.worker_groups(config, kuberay.OVERLAYS["gpu"]) if g.gpu}
    assert {"sam2", "evf-sam", "svd"} <= gpu_groups and "fal_ai__svd" in wants_gpu
    for name in gpu_groups:
        group = groups[name]
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]


def test_cluster_wiring(built):
    """GCS fault tolerance and the journal on Redis, results on S3, secrets from Secrets."""
    overlay, docs = built
    cluster = _rayservice(docs)["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"] == "visus-redis:6379"
    assert cluster["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password"
    env = _pod_env(overlay, docs)
    assert env["VISUS_JOURNAL_URL"].startswith("redis://visus-redis:6379/")
    assert env["VISUS_STORAGE_URL"].startswith("s3://")
    assert env["VISUS_GPU"] == ("1" if overlay == "gpu" else "0")
    for container in [cluster["headGroupSpec"]["template"]["spec"]["containers"][0],
                      *(g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"])]:
        from_secrets = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert {"VISUS_API_KEYS", "VISUS_SECRET_KEY", "VISUS_REDIS_PASSWORD"} <= from_secrets
        assert any("secretRef" in e for e in container["envFrom"])  # AWS_* for s3fs
        assert "readinessProbe" in container and "livenessProbe" in container
    for group in cluster["workerGroupSpecs"]:
        readiness = group["template"]["spec"]["containers"][0]["readinessProbe"]
        assert "/-/healthz" in " ".join(readiness["exec"]["command"])  # only pods with a Serve proxy take traffic


def _pod_env(overlay: str, docs: list[dict]) -> dict:
    """The visus-env ConfigMap: built by kustomize, or merged here from the generators' literals."""
    config_maps = [d["data"] for d in docs if d["kind"] == "ConfigMap"]
    if config_maps:
        (env,) = config_maps
        return env
    env = {}
    for folder in (K8S / "base", K8S / "overlays" / overlay):
        for generator in yaml.safe_load((folder / "kustomization.yaml").read_text()).get("configMapGenerator", []):
            env.update(item.split("=", 1) for item in generator["literals"])
    return env


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: generated names are not built")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_and_config_map_reference_resolves(overlay):
    docs = build(overlay)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    refs = []

    def walk(node):
        if isinstance(node, dict):
            for key, kind in (("secretKeyRef", "Secret"), ("secretRef", "Secret"),
                              ("configMapRef", "ConfigMap"), ("configMapKeyRef", "ConfigMap")):
                if isinstance(node.get(key), dict):
                    refs.append((kind, node[key]["name"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(docs)
    assert refs and all(ref in names for ref in refs), sorted(set(refs) - names)


# --- negative tests: the validation catches what it should ------------------------------------------

@pytest.fixture
def gpu_rayservice(config):
    return copy.deepcopy(kuberay.render_rayservice(config, "gpu"))


def test_a_misspelt_rayservice_field_is_caught(gpu_rayservice):
    cluster = gpu_rayservice["spec"]["rayClusterConfig"]
    cluster["enableInTreeAutoscalling"] = cluster.pop("enableInTreeAutoscaling")
    errors = manifest_errors(gpu_rayservice)
    assert len(errors) == 1 and "enableInTreeAutoscalling" in errors[0]


def test_a_numeric_ray_start_param_and_a_bad_quantity_are_caught(gpu_rayservice):
    cluster = gpu_rayservice["spec"]["rayClusterConfig"]
    cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "8 Gi"
    assert len(manifest_errors(gpu_rayservice)) == 2


def test_a_worker_group_without_required_fields_is_caught(gpu_rayservice):
    group = gpu_rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]
    del group["minReplicas"], group["maxReplicas"]
    assert len(manifest_errors(gpu_rayservice)) == 2


def test_a_misspelt_serve_option_inside_serve_config_is_caught(gpu_rayservice):
    serve_config = yaml.safe_load(gpu_rayservice["spec"]["serveConfigV2"])
    deployment = next(d for d in serve_config["applications"][0]["deployments"] if "autoscaling_config" in d)
    deployment["autoscaling_config"]["target_ongoing_request"] = 4
    gpu_rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(serve_config)
    errors = manifest_errors(gpu_rayservice)
    assert len(errors) == 1 and "target_ongoing_request" in errors[0] and errors[0].startswith("serveConfigV2")


def test_image_and_ray_versions_agree_with_the_pins():
    """Dockerfile base, rayVersion in the manifests and the ray[serve] pin are one Ray version."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ray_pin,) = [d for d in project["dependencies"] if d.startswith("ray[")]
    assert ray_pin.endswith(f"=={kuberay.RAY_VERSION}")
    assert re.search(rf"^ARG RAY_VERSION={re.escape(kuberay.RAY_VERSION)}$", (ROOT / "Dockerfile").read_text(), re.M)
    assert kuberay.IMAGE == f"visus:{project['version']}"
