"""A tiny Sa2VA checkpoint directory for tests and demos (no download), in the official layout.

``config.json``, ``model.safetensors`` (official key names, the InternLM2 ``wqkv`` packed) and the
tokenizer files, plus the ``tiny_hparams.json`` that :func:`models.sa2va_config.read_config` reads
for the small SAM 2. Sizes and tokenizers are those of the parity packs (``tests/parity/sa2va_*``),
shipped in ``models/assets/sa2va_tiny_{qwen2,internlm2}``: ``qwen2`` is laid out like Sa2VA-1B/4B,
``internlm2`` like Sa2VA-8B.

The weights are random except for four rows, set so that the model answers every question with
``[SEG]`` and then the stop token: a random model would never say ``[SEG]`` and nothing downstream
of the language model would run. Every token embedding carries a constant on hidden unit 0 (which
survives the two small random layers and dominates the last state), and ``lm_head`` maps unit 0 to
``[SEG]``; the ``[SEG]`` embedding also carries unit 1, which ``lm_head`` maps to ``<|im_end|>``.
The projector and SAM 2's hypernetwork outputs are scaled up so that masks depend on the input.
The language model's context is 8192 positions (32768 in the packs and the real models), so that a
too-long prompt is quick to test.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.atomic_folder import holds_exactly, write_folder_atomically
from models.checkpoint_dir import SAFETENSORS_FILE

ASSETS = Path(__file__).parent / "assets"
FAMILIES = ("qwen2", "internlm2")
_SEED = 0


def write_tiny_sa2va(out_dir: Path, family: str = "internlm2", name: str | None = None,
                     answer_with_seg: bool = True) -> Path:
    """Write ``out_dir/<name>`` (default ``sa2va-tiny-<family>``); an identical existing one is kept.

    ``answer_with_seg=False`` leaves the language model fully random: it then rambles until
    ``max_new_tokens`` (what a tokens/s benchmark wants) and rarely says ``[SEG]``.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    assets = ASSETS / f"sa2va_tiny_{family}"
    files = {p.name: p.read_bytes() for p in sorted(assets.iterdir()) if p.is_file()}

    def write(folder: Path) -> None:
        for fname, data in files.items():
            (folder / fname).write_bytes(data)
        _write_weights(folder, answer_with_seg)

    target = Path(out_dir) / (name or f"sa2va-tiny-{family}" + ("" if answer_with_seg else "-random"))
    return write_folder_atomically(target, write, lambda t: holds_exactly(t, files, {SAFETENSORS_FILE}))


def _write_weights(directory: Path, answer_with_seg: bool) -> None:
    from safetensors.torch import save_file

    from models.sa2va import _prompt_width, build_mllm, build_text_hidden_fcs, load_tokenizer
    from models.sa2va_config import read_config
    from models.sa2va_inputs import IMG_CONTEXT, SEG_TOKEN
    from models.sa2va_sam2 import build_predictor
    from models.sa2va_weights import join_checkpoint

    config = read_config(directory)
    vocab = load_tokenizer(directory, config).get_added_vocab()
    with torch.random.fork_rng(devices=[]):  # our fixed seed leaves the caller's RNG alone
        torch.manual_seed(_SEED)
        mllm = build_mllm(config, vocab[IMG_CONTEXT], empty=False)
        sam = build_predictor(config)
        sam_state = sam.state_dict()
        fcs = build_text_hidden_fcs(config, _prompt_width(sam_state))
    with torch.no_grad():
        if answer_with_seg:
            _answer_with_seg(mllm.get_input_embeddings().weight, mllm.lm_head.weight, vocab[SEG_TOKEN],
                             vocab["<|im_end|>"])
        # As in the EVF-SAM2 tiny writer: with the default init the masks hardly depend on the
        # prompt embedding; larger projector and hypernetwork outputs make them do so.
        fcs[2].weight.mul_(8.0)
        for mlp in sam.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(64.0)
        sam_state = sam.state_dict()
    state = join_checkpoint(mllm.state_dict(), sam_state, fcs.state_dict(), config)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / SAFETENSORS_FILE),
              metadata={"format": "pt"})


def _answer_with_seg(embed: torch.Tensor, head: torch.Tensor, seg: int, stop: int) -> None:
    """The four rows of the module docstring: every answer is ``[SEG]`` then the stop token."""
    embed[:, 0] += 3.0
    embed[seg, 1] = 6.0
    head[seg].zero_()
    head[seg, 0] = 1.0
    head[stop].zero_()
    head[stop, 1] = 2.0
