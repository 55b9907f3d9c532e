"""The tiny random SVD and SVD-ControlNet folders: strict loading, a 2-step depth-controlled run, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from PIL import Image
from transformers import CLIPVisionModelWithProjection

from models.svd_controlnet import ControlNetSDVModel
from models.svd_controlnet_pipeline import load_svd_controlnet_pipeline
from models.svd_tiny import write_tiny_svd, write_tiny_svd_controlnet

H, W, FRAMES = 48, 64, 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("svd")
    yield write_tiny_svd(root), write_tiny_svd_controlnet(root)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe(folders):
    return load_svd_controlnet_pipeline(*folders)


def depth_frames(seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 255, size=(FRAMES, 24, 32, 1), dtype=np.uint8)  # resized to H x W by the pipeline
    return [Image.fromarray(np.repeat(g, 3, axis=2)) for g in grey]


def run(pipe, depth_seed: int = 1, seed: int = 7, **kw) -> torch.Tensor:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(30, 40, 3), dtype=np.uint8))
    return pipe(image, depth_frames(depth_seed), height=H, width=W, num_frames=FRAMES, num_inference_steps=2,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="pt", **kw).frames


def test_layouts_and_names(folders):
    svd, controlnet = folders
    assert svd.name == "svd-tiny" and controlnet.name == "svd-controlnet-tiny"
    for rel in ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors", "image_encoder/model.safetensors",
                "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json"]:
        assert (svd / rel).is_file(), rel
    # The released layout: exactly these two files.
    assert sorted(p.name for p in controlnet.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_every_component_loads_strictly(folders):
    svd, controlnet = folders
    for cls, sub in [(UNetSpatioTemporalConditionModel, "unet"), (AutoencoderKLTemporalDecoder, "vae")]:
        _, info = cls.from_pretrained(svd / sub, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), sub
    _, info = CLIPVisionModelWithProjection.from_pretrained(svd / "image_encoder", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    model = ControlNetSDVModel.from_pretrained(controlnet)  # raises on any key difference
    unet = UNetSpatioTemporalConditionModel.from_pretrained(svd / "unet")
    # The ControlNet's trunk has the UNet's parameter names and shapes.
    unet_shapes = {k: v.shape for k, v in unet.state_dict().items()}
    trunk = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("controlnet_")}
    assert trunk and all(unet_shapes[k] == shape for k, shape in trunk.items())


def test_writing_again_keeps_the_folder_and_weights_do_not_depend_on_the_caller(folders, tmp_path):
    svd, controlnet = folders
    stamp = (svd / "unet/diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert write_tiny_svd(svd.parent) == svd
    assert (svd / "unet/diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    torch.manual_seed(1234)
    other = write_tiny_svd_controlnet(tmp_path)
    for name in ["diffusion_pytorch_model.safetensors", "config.json"]:
        assert (other / name).read_bytes() == (controlnet / name).read_bytes()


def test_two_steps_give_frames_deterministically_and_depth_matters(pipe):
    frames = run(pipe)
    assert frames.shape == (1, FRAMES, 3, H, W) and frames.dtype == torch.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert torch.equal(run(pipe), frames)
    assert not torch.equal(run(pipe, seed=8), frames)
    # The tiny ControlNet is initialised so that depth and the conditioning scale move the frames.
    assert (run(pipe, depth_seed=2) - frames).abs().max() > 0.05
    assert (run(pipe, controlnet_cond_scale=0.0) - frames).abs().max() > 0.05


def test_without_guidance_and_with_several_videos(pipe):
    single = run(pipe, max_guidance_scale=1.0)
    assert single.shape == (1, FRAMES, 3, H, W)
    pair = run(pipe, num_videos_per_prompt=2)
    assert pair.shape == (2, FRAMES, 3, H, W)


def test_depth_frame_count_must_match(pipe):
    with pytest.raises(ValueError, match="3 depth frames for 4 video frames"):
        image = Image.new("RGB", (W, H))
        pipe(image, depth_frames(1)[:3], height=H, width=W, num_frames=FRAMES, num_inference_steps=1)
