"""`visus config render --kuberay`: worker groups derived from the config, deployments pinned to them
by a Ray custom resource (in the KubeRay render only), sizes, overlays and the CLI."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serve import kuberay
from serve.cli import main, render_serve_config
from serve.config import DEFAULT_CONFIG_PATH, DeploymentOptions, load_config

K8S = Path(__file__).parents[2] / "k8s"


def _endpoint(endpoint_id: str, num_gpus: float = 1, **extra) -> dict:
    return {"id": endpoint_id, "deployment": "deployments.x:X", "input_schema": "deployments.x:I",
            "output_schema": "deployments.x:O",
            "options": {"num_gpus": num_gpus, "autoscaling_config": {"min_replicas": 0, "max_replicas": 2}}, **extra}


def _config(*endpoints: dict):
    """A config of its own (not the default one, which grows): SAM 2 with a worker, EVF-SAM calling the
    Segmind endpoint's deployment, and `endpoints`."""
    return kuberay.FileConfig.model_validate({"endpoints": [
        _endpoint("fal-ai/sam2/image", num_gpus=0.25),
        _endpoint("fal-ai/sam2/video", num_gpus=0.25, workers=[
            {"name": "encoder", "deployment": "deployments.x:E", "options": {"num_gpus": 0.25}}]),
        _endpoint("fal-ai/evf-sam", num_gpus=0.25, workers=[{"name": "grounding_dino"}]),
        _endpoint("sam-v2-image", num_gpus=0.25, protocol="segmind", name="grounding_dino"),
        *endpoints]})


def _groups(rayservice: dict) -> dict:
    return {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _deployments(rayservice: dict) -> dict:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


def test_resources_option_reaches_ray_actor_options():
    options = DeploymentOptions(resources={"visus_group_x": 1})
    assert options.ray_options(has_gpu=False)["ray_actor_options"]["resources"] == {"visus_group_x": 1}
    assert "resources" not in DeploymentOptions().ray_options(has_gpu=True)["ray_actor_options"]


def test_local_render_pins_nothing():
    rendered = render_serve_config(load_config(None, api_keys=["k"]), has_gpu=True)
    assert all("resources" not in d["ray_actor_options"] for d in rendered["applications"][0]["deployments"])


def test_groups_follow_the_enabled_endpoints():
    config = _config(_endpoint("fal-ai/sa2va/8b/image"), _endpoint("fal-ai/sa2va/8b/video"),
                     _endpoint("fal-ai/off", enabled=False))
    groups = {g.name: [name for name, _ in g.deployments]
              for g in kuberay.worker_groups(config, kuberay.OVERLAYS["gpu"])}
    assert groups == {
        "cpu": ["gateway"],
        "sam2": ["fal_ai__sam2__image", "fal_ai__sam2__video", "encoder"],
        "evf-sam": ["fal_ai__evf_sam", "grounding_dino"],  # EVF-SAM calls Grounding DINO: one group
        "sa2va": ["fal_ai__sa2va__8b__image", "fal_ai__sa2va__8b__video"],  # a new family gets its group
    }
    rayservice = kuberay.render_rayservice(config, "gpu")
    sa2va = _groups(rayservice)["sa2va"]
    assert sa2va["minReplicas"] == 0 and sa2va["maxReplicas"] == 4  # 2 deployments x 2 replicas x 1 GPU
    assert sa2va["rayStartParams"]["resources"] == '"{\\"visus_group_sa2va\\": 1000}"'
    assert sa2va["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "64Gi"
    assert _deployments(rayservice)["fal_ai__sa2va__8b__video"]["ray_actor_options"]["resources"] == {
        "visus_group_sa2va": 1.0}
    sam2 = _groups(rayservice)["sam2"]  # (2 + 2 + 1 replicas) x 1/4 GPU: 2 pods; 5 CPUs / 2 pods: 3 + 1 spare
    assert sam2["maxReplicas"] == 2 and sam2["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}


def test_an_unreferenced_segmind_endpoint_and_a_cpu_model_get_groups_of_their_own():
    config = _config(_endpoint("fal-ai/cpu-model", num_gpus=0), _endpoint("solo-slug", protocol="segmind"))
    groups = _groups(kuberay.render_rayservice(config, "gpu"))
    assert "solo-slug" in groups
    limits = groups["cpu-model"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and groups["cpu-model"]["minReplicas"] == 0


def test_a_multi_gpu_deployment_gets_pods_with_that_many_gpus():
    group = _groups(kuberay.render_rayservice(_config(_endpoint("fal-ai/big", num_gpus=2)), "gpu"))["big"]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert group["maxReplicas"] == 2


def test_cpu_tiny_runs_everything_in_the_cpu_group_without_gpus():
    config = kuberay.load_file_config()
    rayservice = kuberay.render_rayservice(config, "cpu-tiny")
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu" and group["minReplicas"] == 1
    assert group["template"]["spec"]["initContainers"][0]["command"][:3] == ["visus", "models", "tiny"]
    deployments = _deployments(rayservice)
    assert all(d["ray_actor_options"]["resources"] == {"visus_group_cpu": 1.0} for d in deployments.values())
    assert all("num_gpus" not in d["ray_actor_options"] for d in deployments.values())
    assert "nvidia.com/gpu" not in yaml.safe_dump(rayservice)


def test_gpu_overlay_uses_real_checkpoints_and_binds_the_proxies_to_all_interfaces():
    rayservice = kuberay.render_rayservice(kuberay.load_file_config(), "gpu")
    text = rayservice["spec"]["serveConfigV2"]
    assert "sam2.1_hiera_large.pt" in text and "stable-video-diffusion-img2vid-xt" in text
    assert "hiera_micro" not in text and "svd-tiny" not in text
    assert yaml.safe_load(text)["http_options"]["host"] == "0.0.0.0"
    endpoints = yaml.safe_load(text)["applications"][0]["args"]["config"]["endpoints"]
    svd = next(e for e in endpoints if e["id"] == "fal-ai/svd")
    assert (svd["model"]["height"], svd["model"]["width"]) == (576, 1024)


def test_cli_renders_one_overlay_without_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VISUS_PORT", "9999")
    monkeypatch.setenv("VISUS_API_KEYS", "must-not-leak")
    out = tmp_path / "rayservice.yaml"
    assert main(["config", "render", "--kuberay", "--overlay", "cpu-tiny", "-o", str(out)]) == 0
    expected = kuberay.dump_yaml(kuberay.render_rayservice(kuberay.load_file_config(), "cpu-tiny"))
    assert out.read_text() == expected and "must-not-leak" not in expected
    assert yaml.safe_load(yaml.safe_load(expected)["spec"]["serveConfigV2"])["http_options"]["port"] == 8000


def test_cli_writes_the_committed_tree(tmp_path):
    assert main(["config", "render", "--kuberay", "--k8s-dir", str(tmp_path)]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(str(p.relative_to(K8S)) for p in K8S.rglob("*") if p.is_file())
    for rel in written:
        assert (tmp_path / rel).read_text() == (K8S / rel).read_text(), rel


def test_cluster_config_leaves_the_project_config_alone():
    config = kuberay.load_file_config()
    before = copy.deepcopy(config.model_dump())
    kuberay.cluster_config(config, kuberay.OVERLAYS["gpu"])
    assert config.model_dump() == before


@pytest.mark.parametrize("overlay", sorted(kuberay.OVERLAYS))
def test_every_deployment_is_pinned_in_the_inline_config_too(overlay):
    """The app builder binds from the inline config: its options must carry the same pins."""
    cluster = kuberay.cluster_config(kuberay.load_file_config(), kuberay.OVERLAYS[overlay])
    assert cluster.gateway.resources
    assert all(options.resources for _, options in cluster.model_deployments())
