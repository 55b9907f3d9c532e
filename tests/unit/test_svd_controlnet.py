"""The SVD temporal depth ControlNet against the golden parity pack (tests/parity/svd_controlnet).

The references are the pack's ``d042.`` outputs: the original code on diffusers 0.42, whose
temporal cross-attention context ordering our reused diffusers blocks have (the pack README's
"Reference variants"). Tolerances are the pack's (cases.json). Float32, one thread.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from models.svd_controlnet import CheckpointKeysError, ControlNetSDVModel
from models.svd_controlnet_pipeline import RELEASED_ADDED_TIME_IDS, load_svd_controlnet_pipeline
from models.svd_controlnet_unet import down_block_skip_counts, skip_add_counts, unet_with_controlnet_residuals

PACK = Path(__file__).resolve().parents[1] / "parity" / "svd_controlnet"
CASES = json.loads((PACK / "cases.json").read_text())
VARIANT = CASES["reference_variants"]["d042"]["key_prefix"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(PACK / CASES["tensors_file"]))


def ref(key: str, variant: bool = True) -> torch.Tensor:
    return golden()[(VARIANT if variant else "") + key]


def close(actual: torch.Tensor, key: str, atol: float, rtol: float = 0.0, variant: bool = True) -> None:
    expected = ref(key, variant)
    assert actual.shape == expected.shape, key
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{key}: {m}")


@functools.cache
def pack_pipeline():
    return load_svd_controlnet_pipeline(PACK / CASES["svd_pipeline_dir"], PACK / CASES["controlnet_dir"])


def cn_inputs() -> dict[str, torch.Tensor]:
    names = CASES["controlnet_forward"]["inputs"]
    return {arg: golden()[key] for arg, key in names.items()}


@functools.cache
def controlnet_outputs(scale: float):
    inputs = cn_inputs()
    with torch.no_grad():
        return pack_pipeline().controlnet(
            inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
            added_time_ids=inputs["added_time_ids"], controlnet_cond=inputs["controlnet_cond"],
            conditioning_scale=scale, return_dict=False)


# --- case 1: ControlNet forward -------------------------------------------------------------------

def test_checkpoint_loads_float16_storage_into_float32_parameters():
    controlnet = pack_pipeline().controlnet
    assert isinstance(controlnet, ControlNetSDVModel)
    stored = load_file(str(PACK / CASES["controlnet_dir"] / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    params = controlnet.state_dict()
    assert set(params) == set(stored)
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(torch.equal(params[k], v.float()) for k, v in stored.items())


def test_conditioning_embedding():
    case = CASES["controlnet_forward"]
    with torch.no_grad():
        emb = pack_pipeline().controlnet.controlnet_cond_embedding(cn_inputs()["controlnet_cond"].flatten(0, 1))
    close(emb, case["intermediate"]["cond_embedding"], **case["tolerance"], variant=False)


@pytest.mark.parametrize("which", ["s1", "s2"])
def test_controlnet_residuals(which):
    case = CASES["controlnet_forward"]
    scale = case["conditioning_scales"][["s1", "s2"].index(which)]
    down, mid = controlnet_outputs(scale)
    wanted = case["outputs"][which]
    indexed = wanted["down"] if isinstance(wanted["down"], dict) else dict(enumerate(wanted["down"]))
    assert len(down) == 4  # conv_in + (resnet + downsampler) + resnet
    for index, key in indexed.items():
        close(down[int(index)], key, **case["tolerance"])
    close(mid, wanted["mid"], **case["tolerance"])


def test_residuals_scale_linearly():
    (down1, mid1), (down2, mid2) = controlnet_outputs(1.0), controlnet_outputs(0.6)
    torch.testing.assert_close(mid2, mid1 * 0.6)
    for a, b in zip(down1, down2):
        torch.testing.assert_close(b, a * 0.6)


# --- case 2: UNet with injected residuals ---------------------------------------------------------

def test_repeated_add_counts():
    unet = pack_pipeline().unet
    assert skip_add_counts(down_block_skip_counts(unet.down_blocks)) == [2, 2, 2, 1]  # pack README
    # The real SVD UNet: 3 blocks of 2 resnets + downsampler, then 2 resnets (svd-controlnet.md 5).
    assert skip_add_counts([3, 3, 3, 2]) == [4] * 4 + [3] * 3 + [2] * 3 + [1] * 2


def unet_output(down, mid) -> torch.Tensor:
    inputs = cn_inputs()
    with torch.no_grad():
        return unet_with_controlnet_residuals(
            pack_pipeline().unet, inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
            inputs["added_time_ids"], down, mid)


def test_unet_with_residuals():
    case = CASES["unet_with_residuals"]
    down, mid = controlnet_outputs(CASES["controlnet_forward"]["conditioning_scales"][0])
    close(unet_output(down, mid), case["outputs"]["with_residuals"], **case["tolerance"])


def test_unet_with_zero_residuals_is_the_stock_unet():
    case = CASES["unet_with_residuals"]
    down, mid = controlnet_outputs(1.0)
    out = unet_output([torch.zeros_like(d) for d in down], torch.zeros_like(mid))
    close(out, case["outputs"]["zero_residuals"], **case["tolerance"])
    inputs = cn_inputs()
    with torch.no_grad():
        stock = pack_pipeline().unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                                     inputs["added_time_ids"], return_dict=False)[0]
    assert torch.equal(out, stock)


def test_unet_rejects_a_wrong_number_of_residuals():
    down, mid = controlnet_outputs(1.0)
    with pytest.raises(ValueError, match="4 skip tensors but 3"):
        unet_output(down[:3], mid)


# --- case 3: full pipeline ------------------------------------------------------------------------

def pipeline_inputs() -> tuple[Image.Image, list[Image.Image]]:
    case = CASES["pipeline"]
    image = Image.open(PACK / case["image"]).convert("RGB")
    return image, [Image.open(PACK / f).convert("RGB") for f in case["depth_frames"]]


def run_pipeline(**overrides) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return run_pipeline_with(*pipeline_inputs(), **overrides)


def run_pipeline_with(image, depth, **overrides) -> tuple[torch.Tensor, list[torch.Tensor]]:
    case = CASES["pipeline"]
    call = {k: v for k, v in case["call"].items() if k != "batch_size"}  # the original's default, 1
    call.update(overrides)
    steps: list[torch.Tensor] = []

    def record(pipe, step, timestep, tensors):
        steps.append(tensors["latents"].clone())
        return {}

    frames = pack_pipeline()(
        image=image, controlnet_condition=depth,
        generator=torch.Generator(case["generator_device"]).manual_seed(case["generator_seed"]),
        callback_on_step_end=record, **call).frames
    return frames, steps


@functools.cache
def pack_run() -> tuple[torch.Tensor, list[torch.Tensor]]:
    return run_pipeline()


def test_pipeline_image_embeddings():
    case = CASES["pipeline"]
    image, _ = pipeline_inputs()
    with torch.no_grad():
        emb = pack_pipeline().encode_clip_image(image, "cpu", 1, do_classifier_free_guidance=True,
                                                normalize=False)
    close(emb, case["outputs"]["image_embeddings"], atol=case["tolerance"]["image_embeddings_atol"])


def test_pipeline_latents_per_step_and_frames():
    case = CASES["pipeline"]
    tol = case["tolerance"]
    frames, steps = pack_run()
    assert len(steps) == len(case["outputs"]["latents_after_step"])
    for latents, key in zip(steps, case["outputs"]["latents_after_step"]):
        close(latents, key, atol=tol["latents_atol"], rtol=tol["latents_rtol"])
    close(frames, case["outputs"]["frames"], atol=tol["frames_atol"])
    pipe = pack_pipeline()
    close(pipe.scheduler.timesteps, case["scheduler"]["timesteps"], atol=0, variant=False)
    close(pipe.scheduler.sigmas, case["scheduler"]["sigmas"], atol=0, variant=False)


def test_released_quirks_are_defaults_that_can_be_switched_off():
    assert list(RELEASED_ADDED_TIME_IDS) == CASES["pipeline"]["effective_added_time_ids"]
    frames, _ = pack_run()
    other, _ = run_pipeline(fps=12, motion_bucket_id=40)
    assert torch.equal(other, frames)
    # Deriving the ids from the call (stock SVD: fps - 1, motion bucket, noise aug) is a switch away.
    derived, _ = run_pipeline(fixed_added_time_ids=None)
    assert (derived - frames).abs().max() > 1e-3
    # So is stock SVD's CLIP mean/std normalisation, which the release skips.
    normalised, _ = run_pipeline(normalize_clip_input=True)
    assert (normalised - frames).abs().max() > 1e-2


def test_greyscale_depth_frames_are_expanded_to_rgb():
    frames, _ = pack_run()
    image, depth = pipeline_inputs()  # the pack's PNGs have 3 equal channels
    grey, _ = run_pipeline_with(image, [d.convert("L") for d in depth])
    assert torch.equal(grey, frames)


# --- strict loading -------------------------------------------------------------------------------

def copy_controlnet(tmp_path: Path, edit) -> Path:
    src = PACK / CASES["controlnet_dir"]
    dst = tmp_path / "controlnet"
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    state = load_file(str(src / "diffusion_pytorch_model.safetensors"))
    edit(state)
    save_file(state, str(dst / "diffusion_pytorch_model.safetensors"))
    return dst


def test_missing_key_fails_with_a_clear_error(tmp_path):
    folder = copy_controlnet(tmp_path, lambda s: s.pop("controlnet_mid_block.weight"))
    with pytest.raises(CheckpointKeysError, match=r"missing \[controlnet_mid_block\.weight\], unexpected none"):
        ControlNetSDVModel.from_pretrained(folder)


def test_unexpected_key_fails(tmp_path):
    folder = copy_controlnet(tmp_path, lambda s: s.update({"up_blocks.0.extra": torch.zeros(1)}))
    with pytest.raises(CheckpointKeysError, match=r"unexpected \[up_blocks\.0\.extra\]"):
        ControlNetSDVModel.from_pretrained(folder)
