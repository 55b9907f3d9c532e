"""Grounding DINO text-to-box detection on the randomly initialised tiny checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.grounding_dino import Detection, GroundingDino, normalize_phrase
from models.grounding_dino_tiny import OFFICIAL_FILES, write_tiny_grounding_dino

PHRASE = "a cat. a red ball."
ALL = dict(box_threshold=0.0, text_threshold=0.0)  # every query, whatever the random weights say


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model gains nothing from threads, and when other test runs share the CPUs, torch's
    # threads wait on each other: a 10 ms forward pass took 1 to 2 s with 2 threads on 2 busy cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_grounding_dino(tmp_path_factory.mktemp("grounding_dino"))


@pytest.fixture(scope="module")
def detector(tiny_dir) -> GroundingDino:
    return GroundingDino.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    # Non-square on purpose: 56 rows x 80 columns (within the processor's aspect limit, so not padded).
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, size=(56, 80, 3), dtype=np.uint8)
    img[10:35, 20:60] = (220, 40, 40)
    return img


def test_directory_has_the_official_file_names(tiny_dir):
    assert sorted(p.name for p in tiny_dir.iterdir()) == sorted(OFFICIAL_FILES)
    vocab = (tiny_dir / "vocab.txt").read_text().splitlines()
    # The ids transformers' Grounding DINO hard-codes as phrase delimiters (bert-base-uncased's).
    assert [vocab[i] for i in (0, 101, 102, 1012, 1029)] == ["[PAD]", "[CLS]", "[SEP]", ".", "?"]
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "grounding-dino"
    assert config["use_timm_backbone"] is False and config["use_pretrained_backbone"] is False
    assert config["backbone_config"]["model_type"] == "swin"
    assert config["text_config"]["model_type"] == "bert"
    preprocessor = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "GroundingDinoImageProcessor"


def test_writer_is_deterministic(tiny_dir, tmp_path):
    again = write_tiny_grounding_dino(tmp_path / "again")
    for name in OFFICIAL_FILES:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_loads_strictly(detector):
    info = detector.loading_info
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert not info["error_msgs"]
    assert sum(p.numel() for p in detector.model.parameters()) < 500_000


def test_missing_weights_are_refused(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.text_projection.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="text_projection"):
        GroundingDino.from_pretrained(broken)


def test_typical_phrases_tokenize_without_unknown_tokens(detector):
    tokenizer = detector.processor.tokenizer
    for phrase in ["a person on a bicycle.", "the dog next to the red car.", "skateboarders."]:
        assert tokenizer.unk_token_id not in tokenizer(phrase)["input_ids"], phrase


def test_boxes_are_in_original_image_pixels(detector, image):
    height, width = image.shape[:2]
    found = detector.detect(image, PHRASE, **ALL)
    assert len(found) == detector.model.config.num_queries
    assert all(isinstance(d, Detection) for d in found)
    for d in found:
        x0, y0, x1, y1 = d.box
        assert 0.0 <= x0 <= x1 <= width and 0.0 <= y0 <= y1 <= height, d.box
    # Some random boxes reach past the border: they come back clipped to it.
    assert any(d.box[0] == 0.0 or d.box[2] == width or d.box[1] == 0.0 or d.box[3] == height for d in found)

    # The same boxes straight from the model: normalised (cx, cy, w, h) times the image size.
    inputs = detector.processor(images=Image.fromarray(image), text=PHRASE, return_tensors="pt")
    with torch.inference_mode():
        out = detector.model(**inputs)
    cx, cy, w, h = out.pred_boxes[0].unbind(-1)
    expected = torch.stack(
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height],
        dim=-1,
    )
    expected[:, 0::2] = expected[:, 0::2].clamp(0, width)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, height)
    scores = out.logits[0].sigmoid().max(-1).values
    order = torch.argsort(scores, descending=True, stable=True)
    got = torch.tensor([d.box for d in found])
    torch.testing.assert_close(got, expected[order], atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.tensor([d.score for d in found]), scores[order])


def test_deterministic_and_sorted(detector, image):
    first = detector.detect(image, PHRASE)
    assert first, "the tiny checkpoint should find boxes at the default thresholds"
    assert detector.detect(image, PHRASE) == first
    scores = [d.score for d in detector.detect(image, PHRASE, **ALL)]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)  # not saturated at 1.0


def test_box_threshold_keeps_scores_strictly_above(detector, image):
    every = detector.detect(image, PHRASE, **ALL)
    cut = float(np.median([d.score for d in every]))
    kept = detector.detect(image, PHRASE, box_threshold=cut, text_threshold=0.0)
    assert [d.box for d in kept] == [d.box for d in every if d.score > cut]
    assert 0 < len(kept) < len(every)


def test_max_boxes_keeps_the_best(detector, image):
    every = detector.detect(image, PHRASE, **ALL)
    assert detector.detect(image, PHRASE, max_boxes=3, **ALL) == every[:3]
    assert detector.detect(image, PHRASE, max_boxes=1000, **ALL) == every


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_bad_max_boxes_is_refused(detector, image, bad):
    with pytest.raises(ValueError, match="max_boxes"):
        detector.detect(image, PHRASE, max_boxes=bad)


@pytest.mark.parametrize("name", ["box_threshold", "text_threshold"])
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high"])
def test_bad_thresholds_are_refused(detector, image, name, bad):
    with pytest.raises(ValueError, match=name):
        detector.detect(image, PHRASE, **{name: bad})


@pytest.mark.parametrize("phrase", ["", "   ", " . ", "..", None])
def test_empty_phrase_is_refused(detector, image, phrase):
    with pytest.raises(ValueError, match="prompt"):
        detector.detect(image, phrase)


def test_too_long_phrase_is_refused(detector, image):
    with pytest.raises(ValueError, match="prompt is too long"):
        detector.detect(image, "red ball. " * 200)


def test_bad_image_is_refused(detector, image):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(image.astype(np.float32), PHRASE)
    with pytest.raises(ValueError, match="RGB"):
        detector.detect(image[:, :, :2], PHRASE)


def test_phrase_is_normalised(detector, image):
    assert normalize_phrase("  A Red Ball \n") == "a red ball."
    assert normalize_phrase("cat. dog.") == "cat. dog."
    assert detector.detect(image, "  A CAT. A Red Ball") == detector.detect(image, PHRASE)


def test_labels_are_prompt_words(detector, image):
    words = set(PHRASE.replace(".", " ").split())
    found = detector.detect(image, PHRASE, **ALL)
    # With text_threshold 0 every prompt token is part of every label, [SEP] and periods aside.
    assert {d.label for d in found} == {"a cat a red ball"}
    for d in detector.detect(image, PHRASE, text_threshold=0.5):
        assert set(d.label.split()) <= words, d.label


def test_other_tokenizer_and_processor_layouts_load_the_same(detector, tiny_dir, image, tmp_path):
    expected = detector.detect(image, PHRASE, **ALL)

    # vocab.txt only, as in checkpoints converted before tokenizer.json existed.
    vocab_only = tmp_path / "vocab_only"
    shutil.copytree(tiny_dir, vocab_only)
    (vocab_only / "tokenizer.json").unlink()
    assert GroundingDino.from_pretrained(vocab_only).detect(image, PHRASE, **ALL) == expected

    # What transformers 5.23's own processor.save_pretrained writes: processor_config.json.
    native = tmp_path / "native"
    native.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dir / name, native / name)
    detector.processor.save_pretrained(native)
    assert (native / "processor_config.json").is_file()
    assert GroundingDino.from_pretrained(native).detect(image, PHRASE, **ALL) == expected


@pytest.mark.parametrize("shape", [(1, 500), (500, 1), (3000, 2), (1, 1)])
def test_very_elongated_images_are_padded_not_refused(detector, shape):
    """The processor alone would scale a 1x500 image's short side to 0 pixels and fail."""
    image = np.random.default_rng(1).integers(0, 255, size=(*shape, 3), dtype=np.uint8)
    found = detector.detect(image, PHRASE, **ALL)
    assert found
    for d in found:
        x0, y0, x1, y1 = d.box
        assert 0.0 <= x0 <= x1 <= shape[1] and 0.0 <= y0 <= y1 <= shape[0]
