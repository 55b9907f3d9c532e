"""A randomly initialised Grounding DINO checkpoint for tests (no download needed).

The directory has the file layout of ``IDEA-Research/grounding-dino-tiny`` on the Hugging Face
Hub, so :meth:`models.grounding_dino.GroundingDino.from_pretrained` reads it exactly as it reads
the real one: ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` and the BERT
uncased tokenizer files ``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json`` and
``special_tokens_map.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

# The files the official checkpoints ship (README and the legacy pytorch_model.bin aside).
OFFICIAL_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)

# Small enough for a fast test (about 0.23M parameters), large enough that the image processor's
# aspect-preserving resize still gives the Swin stages a few cells.
# Square inputs at 64 px left the last feature level 1x1, where the extra level's GroupNorm fails; at
# 128 px every level keeps at least 2x2 cells for any aspect ratio the processor produces.
IMAGE_SIZE = {"shortest_edge": 128, "longest_edge": 192}

# The class head has no bias: a box's logits are dot products of its decoder state with the
# prompt's token states. With random weights they are about +-10, so every box scores 0.95 to 1.0
# and their order is rounding noise. Scaling the decoder's final LayerNorm, which feeds the class
# head, by this factor brings them to about +-2: most of the 10 boxes still score above the default
# 0.35, with distinct scores spread over about (0.3, 0.95) for threshold and ordering tests.
CLASS_LOGIT_SCALE = 0.2

# The box heads start at zero (boxes = the encoder's grid proposals, all inside the image). Small
# random weights and a size bias move and grow the boxes so that some cross the image border,
# which exercises the clipping in GroundingDino.detect.
BOX_HEAD_STD = 0.2
BOX_SIZE_BIAS = 2.5

_SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}

# Common lower-case words, so that typical prompts tokenize to whole words as with the real vocab.
_WORDS = """
the a an of and or in on at to with without for from by near under over behind above below
next left right top bottom front back side middle center inside outside between small large big
little tall short long wide narrow round square flat open closed empty full old new young
red green blue yellow orange purple pink brown black white gray grey gold silver dark light bright
person people man men woman women boy girl child children baby kid face head hair eye eyes nose
mouth ear hand hands arm arms leg legs foot feet finger body shirt jacket coat hat cap dress
shoe shoes bag backpack umbrella tie glasses helmet
cat cats dog dogs horse horses bird birds cow cows sheep elephant bear zebra giraffe animal fish
mouse duck chicken pig rabbit monkey lion tiger
car cars truck bus train bicycle bike motorcycle airplane plane boat ship vehicle wheel tire road
street sign light traffic stop parking meter bench fence bridge
chair chairs couch sofa bed table desk toilet sink door window wall floor ceiling roof stairs
house building room kitchen shelf cabinet drawer mirror lamp clock vase plant flower tree trees
grass leaf leaves rock stone sand water sea river lake sky cloud sun snow mountain hill field
tv television laptop computer keyboard phone screen monitor remote book books paper box
bottle cup glass wine fork knife spoon bowl plate food fruit apple banana orange sandwich pizza
cake donut carrot broccoli hot bread
ball toy kite frisbee skateboard surfboard skis racket bat glove teddy scissors brush
oven microwave refrigerator fridge toaster
logo text label number letter word line circle shape object thing part piece edge corner
one two three four five many some all any each other this that these those it its
is are be was has have can not no yes very
""".split()

# Word pieces: common suffixes, then every lower-case letter and digit as a continuation, so any
# lower-case ASCII word tokenizes (piece by piece) without [UNK].
_PIECES = [f"##{p}" for p in "s es ed ing er ers est ly y ies ion".split()]
_PIECES += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]


def tiny_bert_vocab() -> list[str]:
    """A small BERT uncased vocabulary whose special ids match bert-base-uncased.

    transformers' Grounding DINO hard-codes ``[CLS]`` = 101, ``[SEP]`` = 102, ``.`` = 1012 and
    ``?`` = 1029 as phrase delimiters (``SPECIAL_TOKENS`` in modeling_grounding_dino), and 0 as
    ``[PAD]``. So the first 1067 entries follow bert-base-uncased's layout: ``[PAD]``,
    ``[unused*]``, ``[UNK] [CLS] [SEP] [MASK]`` at 100-103, more ``[unused*]``, and from 999
    the printable ASCII characters without upper case (``.`` lands on 1012, ``?`` on 1029).
    """
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 999 - len(vocab))]
    vocab += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    seen = set(vocab)
    for token in _WORDS + _PIECES:
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    ids = {t: i for i, t in enumerate(vocab)}
    delimiters = (ids["[PAD]"], ids["[CLS]"], ids["[SEP]"], ids["."], ids["?"])
    assert delimiters == (0, 101, 102, 1012, 1029), delimiters
    return vocab


def tiny_grounding_dino_config(vocab_size: int):
    """The GroundingDinoConfig of the tiny checkpoint: the real architecture at minimal widths."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    backbone = SwinConfig(
        image_size=IMAGE_SIZE["shortest_edge"],
        embed_dim=8,  # stage widths 8, 16, 32, 64
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        drop_path_rate=0.0,
        out_features=["stage2", "stage3", "stage4"],  # as the real config: 3 levels + 1 extra conv
    )
    text = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=512,
    )
    return GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        # transformers 5.23 always builds the backbone from backbone_config and the text model
        # from text_config (random weights, no download); these two keys are what the official
        # config.json carries and are kept for older readers.
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=32,  # the input projections use GroupNorm(32, d_model)
        num_queries=10,
        num_feature_levels=4,
        encoder_layers=1,
        # 2, not 1: the shared box head is tied as bbox_embed.0 -> bbox_embed.N (N >= 1), and with
        # a single decoder layer transformers 5.23 refuses the tie pattern (it finds no target).
        decoder_layers=2,
        encoder_ffn_dim=32,  # the text-image fusion works at encoder_ffn_dim // 2
        decoder_ffn_dim=32,
        encoder_attention_heads=2,  # fusion and text enhancer use half of them
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
    )


def write_tiny_grounding_dino(out_dir: Path) -> Path:
    """Write the tiny random Grounding DINO checkpoint into ``out_dir``; return ``out_dir``.

    Deterministic: the same transformers version writes the same bytes on every call. The files
    are written to a staging folder inside ``out_dir`` and moved into place one by one, the
    weights last, so a reader never sees a half-written file.
    """
    from transformers import (
        BertTokenizer,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = tiny_bert_vocab()
    config = tiny_grounding_dino_config(len(vocab))

    # fork_rng keeps the caller's global RNG stream untouched by our fixed seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GroundingDinoForObjectDetection(config).eval()
        with torch.no_grad():
            model.model.decoder.layer_norm.weight.mul_(CLASS_LOGIT_SCALE)
            # bbox_embed.* and model.decoder.bbox_embed.* are one tied module: changing one
            # changes all, and the checkpoint stores it once.
            last = model.bbox_embed[0].layers[-1]
            last.weight.normal_(0.0, BOX_HEAD_STD)
            last.bias.copy_(torch.tensor([0.0, 0.0, BOX_SIZE_BIAS, BOX_SIZE_BIAS]))

    tokenizer = BertTokenizer(
        vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=512
    )
    image_processor = GroundingDinoImageProcessor(size=dict(IMAGE_SIZE))

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-") as tmp:
        staging = Path(tmp)
        model.save_pretrained(staging, safe_serialization=True)
        # Component by component rather than GroundingDinoProcessor.save_pretrained: in 5.23 that
        # writes processor_config.json (instead of preprocessor_config.json) and neither vocab.txt
        # nor special_tokens_map.json, which is not the layout of the official checkpoints.
        image_processor.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        (staging / "special_tokens_map.json").write_text(
            json.dumps(_SPECIAL_TOKENS, indent=2) + "\n"
        )
        missing = [name for name in OFFICIAL_FILES if not (staging / name).is_file()]
        if missing:
            raise RuntimeError(f"transformers did not write {missing}; did its save layout change?")
        # transformers writes model.safetensors owner-only (0600); give it the other files' mode.
        shutil.copymode(staging / "config.json", staging / "model.safetensors")
        for name in sorted(OFFICIAL_FILES, key=lambda n: n == "model.safetensors"):
            os.replace(staging / name, out_dir / name)
    return out_dir
