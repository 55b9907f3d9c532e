"""`models/svd.py` on a tiny random SVD pipeline: plain-pipeline equality, seeds, the motion brush, progress."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.svd import SvdGenerator, load_svd_pipeline
from models.svd_tiny import write_tiny_svd, write_tiny_svd_controlnet

H = W = 64
FRAMES, STEPS = 4, 2


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("svd")
    pipe, controlled = load_svd_pipeline(write_tiny_svd(folder), controlnet=write_tiny_svd_controlnet(folder))
    yield SvdGenerator(pipe, H, W, decode_chunk_size=FRAMES, controlled=controlled)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(48, 80, 3), dtype=np.uint8)  # not the output size: the pipeline resizes


def run(generator, image, **kw):
    return generator.generate(image, seed=kw.pop("seed", 7), num_frames=FRAMES, steps=STEPS, **kw)


def test_without_a_mask_it_is_the_plain_pipeline_call(generator, image):
    ours = run(generator, image, fps=9, motion_bucket_id=100, cond_aug=0.05)
    plain = generator.pipe(Image.fromarray(image), height=H, width=W, num_frames=FRAMES, num_inference_steps=STEPS,
                           fps=9, motion_bucket_id=100, noise_aug_strength=0.05, decode_chunk_size=FRAMES,
                           generator=torch.Generator("cpu").manual_seed(7), output_type="np").frames[0]
    assert ours.frames.shape == (FRAMES, H, W, 3) and ours.frames.dtype == np.uint8
    assert np.array_equal(ours.frames, np.clip(np.rint(plain * 255), 0, 255).astype(np.uint8))


def test_same_seed_same_video_other_seed_other_video(generator, image):
    a, b, c = run(generator, image), run(generator, image), run(generator, image, seed=8)
    assert np.array_equal(a.frames, b.frames) and a.seed == 7
    assert not np.array_equal(a.frames, c.frames)


def test_motion_brush_keeps_the_still_latents_equal_to_the_image_latent(generator, image):
    still = np.zeros((48, 80), bool)
    still[:, :40] = True  # the left half stays still (any size: resized to the output)
    result = run(generator, image, still_mask=still)
    z0 = generator.still_latent(Image.fromarray(image))[0, 0]
    cells = generator.latent_mask(still)[0, 0, 0].bool()
    assert cells.any() and not cells.all()
    inside = (result.latents - z0)[:, :, cells]
    assert inside.abs().max().item() == 0.0  # every frame, exactly
    outside = (result.latents - z0)[:, :, ~cells]
    assert outside.abs().max().item() > 0.1
    moving = result.latents[1:] - result.latents[:-1]
    assert moving[:, :, cells].abs().max().item() == 0.0 and moving[:, :, ~cells].abs().max().item() > 0


def test_progress_per_step_and_cancel_from_the_callback(generator, image):
    seen = []
    run(generator, image, on_step=lambda k, n: seen.append((k, n)))
    assert seen == [(1, STEPS), (2, STEPS)]

    class Stop(Exception):
        pass

    def stop(k, n):
        raise Stop()

    with pytest.raises(Stop):
        run(generator, image, on_step=stop)


def test_depth_maps_set_the_frame_count_and_steer_the_video(generator, image):
    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], (30, 1, 3))  # any size: resized
    maps = [np.roll(ramp, 4 * i, axis=1) for i in range(3)]
    a = generator.generate(image, seed=5, steps=STEPS, control_maps=maps)
    b = generator.generate(image, seed=5, steps=STEPS, control_maps=maps)
    c = generator.generate(image, seed=5, steps=STEPS, control_maps=[255 - m for m in maps])
    assert a.frames.shape == (3, H, W, 3) and np.array_equal(a.frames, b.frames)
    assert np.abs(a.frames.astype(int) - c.frames.astype(int)).max() > 10
    # The plain pipeline is untouched by the ControlNet sharing its components.
    test_without_a_mask_it_is_the_plain_pipeline_call(generator, image)
